"""A RoBERTa- and a DistilBERT-family base (tiny, random) through init, add-task, export and predict; both dialects."""

from __future__ import annotations

import json

import pytest

from tests.helpers import sentiment_rows, write_tiny_family


@pytest.fixture(scope="module", params=["roberta", "distilbert"])
def family_base(request, tmp_path_factory):
    return request.param, write_tiny_family(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def test_a_base_of_another_family_adds_exports_and_predicts(run_cli, family_base, tmp_path):
    family, base = family_base
    data = tmp_path / "pairs"
    data.mkdir()
    for split, n, seed in (("train", 64, 0), ("dev", 16, 1)):
        rows = [(a, b, int(x == y)) for (a, x), (b, y) in zip(sentiment_rows(n, seed), sentiment_rows(n, seed + 10))]
        (data / f"{split}.tsv").write_text(
            "sentence1\tsentence2\tlabel\n" + "\n".join("\t".join(map(str, r)) for r in rows)
        )
    initialised = run_cli("init", "--base", str(base), "--json")
    assert initialised.exit_code == 0, initialised.output
    assert json.loads(initialised.stdout)["model_type"] == family
    added = run_cli("add-task", "pairs", "--data", str(data), "--epochs", "1", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["status"] == "ready"
    assert run_cli("export", "--output", str(tmp_path / "bundle")).exit_code == 0

    texts = ["good film", "great movie", "bad", "love it"]
    from_registry = json.loads(run_cli("predict", "--task", "pairs", "--json", *texts).stdout)
    from_bundle = json.loads(
        run_cli("predict", "--bundle", str(tmp_path / "bundle"), "--task", "pairs", "--json", *texts).stdout
    )
    assert [row["label"] for row in from_registry] == [row["label"] for row in from_bundle]
    for served, stored in zip(from_bundle, from_registry):
        assert served["probabilities"] == pytest.approx(stored["probabilities"], abs=1e-5)
    assert len(from_bundle) == 2 and {row["label"] for row in from_bundle} <= {"0", "1"}
