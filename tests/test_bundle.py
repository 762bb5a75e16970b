"""Bundles: export, serve without the database, mixed-task batches, verification, import.

Real training on the tiny BERT: three small tasks (single sentence with string labels, a sentence
pair, a regression) with different adapter sizes and max lengths, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from registry.cli.main import cli
from registry.bundle.manifest import FLOAT16_TOLERANCE
from registry.catalog.queries import ready_tasks
from registry.serving.loading import load as load_bundle
from registry.serving import live
from registry.storage.config import Settings
from registry.storage.core import open_registry
from registry.errors import BundleError, DataError, UnknownTask
from registry.storage.models import Base
from registry.serving.predictor import Prediction, Predictor, pad_adapters
from tests.helpers import make_settings, one_line_error, snapshot, write_task_data

TASKS = {  # name: add-task options; sizes and lengths differ so padding and per-task max_length are exercised
    "sentiment": ("--adapter-size", "8", "--max-length", "12"),
    "pairs": ("--adapter-size", "16", "--max-length", "24"),
    "similarity": ("--adapter-size", "12", "--max-length", "20"),
}
NAMES = list(TASKS)
INPUTS = {  # the last inputs run past their task's max_length
    "sentiment": ["good great film", "awful bad movie", "not good", "i love this very good film " * 6],
    "pairs": [("good film", "great movie"), ("bad", "love it"), ("the film was not good " * 5, "it was awful")],
    "similarity": [("good film", "bad film"), ("love", "love"), ("a great movie " * 8, "an awful film " * 8)],
}
ITEMS = [(task, text) for group in zip(*(([(t, x) for x in INPUTS[t]]) for t in NAMES)) for task, text in group]
ITEMS += [(task, text) for task in NAMES for text in INPUTS[task][3:]]
@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    return write_task_data(tmp_path_factory.mktemp("data"))


def cli_for(settings: Settings):
    runner = CliRunner()
    env = {
        "REGISTRY_HOME": str(settings.home),
        "REGISTRY_DB_URL": settings.db_url,
        "REGISTRY_STORE": settings.store_url,
    }
    return lambda *args: runner.invoke(cli, list(map(str, args)), env=env, catch_exceptions=False)


def train_three(invoke, tiny_base: Path, datasets_dir: Path) -> None:
    assert invoke("init", "--base", tiny_base).exit_code == 0
    for name, options in TASKS.items():
        result = invoke(
            "add-task", name, "--data", datasets_dir / name, "--epochs", "1", "--lr", "0.01", "-q", *options
        )
        assert result.exit_code == 0, result.output


def listed(invoke) -> list[tuple]:
    rows = json.loads(invoke("list", "--json").stdout)
    return [
        (r["position"], r["name"], r["task_type"], r["metric"], r["score"], r["trainable_params"], r["adapter_size"])
        for r in rows
    ]


def predictions(predictor: Predictor, items=ITEMS) -> list[Prediction]:
    return predictor.predict_mixed(items)


def assert_close(got: list[Prediction], want: list[Prediction], tolerance: float) -> None:
    assert [p.label if isinstance(p.label, str) else None for p in got] == [
        p.label if isinstance(p.label, str) else None for p in want
    ]
    for g, w in zip(got, want):
        assert g.task == w.task
        if g.probabilities is None:
            assert g.label == pytest.approx(w.label, abs=tolerance)
        else:
            assert g.probabilities == pytest.approx(w.probabilities, abs=tolerance)


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_base, datasets_dir) -> dict:
    """A SQLite registry with the three tasks and its bundles: float32 directory, .tar, float16 directory."""
    root = tmp_path_factory.mktemp("source")
    settings, _ = make_settings(root, "sqlite")
    invoke = cli_for(settings)
    train_three(invoke, tiny_base, datasets_dir)
    for args in (("--output", root / "bundle"), ("--output", root / "bundle", "--archive"),
                 ("--output", root / "half", "--dtype", "float16")):
        assert invoke("export", *args).exit_code == 0
    registry = open_registry(settings)
    expected = predictions(live.from_registry(registry, device="cpu"))
    registry.close()
    return {"settings": settings, "invoke": invoke, "dir": root / "bundle", "tar": root / "bundle.tar",
            "half": root / "half", "predictions": expected, "list": listed(invoke)}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trained(request, tmp_path_factory, tiny_base, datasets_dir, pg_skip_reason):
    """A registry with the three tasks trained, on each dialect: (settings, invoke). Tests must not change it."""
    if request.param == "sqlite":
        source = request.getfixturevalue("source")
        yield source["settings"], source["invoke"]
        return
    if request.param == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path_factory.mktemp(f"trained-{request.param}"), request.param)
    invoke = cli_for(settings)
    train_three(invoke, tiny_base, datasets_dir)
    yield settings, invoke
    cleanup()


@pytest.fixture
def invoke(run_cli):
    """conftest's run_cli (a fresh registry on each dialect), taking paths as arguments."""
    return lambda *args: run_cli(*map(str, args))


@pytest.fixture
def copy_of(source, tmp_path):
    """A fresh copy of the float32 bundle directory, to tamper with."""
    target = tmp_path / "copy"
    shutil.copytree(source["dir"], target)
    return target


# --------------------------------------------------------------------------------------------
# export, then serve without the database


def test_bundle_serves_like_the_registry_with_the_database_deleted(invoke, settings, tiny_base, datasets_dir, tmp_path):
    train_three(invoke, tiny_base, datasets_dir)
    registry = open_registry(settings)
    from_registry = predictions(live.from_registry(registry, device="cpu"))
    registry.close()
    cli_rows = json.loads(
        invoke("predict", "--task", "pairs", "--json", "good film", "great movie", "bad", "love it").stdout
    )
    result = invoke("export", "--output", tmp_path / "bundle", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"] == NAMES

    # delete the database and the store
    if settings.db_url.startswith("sqlite"):
        Path(settings.db_url.removeprefix("sqlite:///")).unlink()
    else:
        engine = create_engine(settings.db_url)
        Base.metadata.drop_all(engine)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        engine.dispose()
    shutil.rmtree(settings.home)
    assert "run `registry init --base PATH_OR_HUB_ID` first" in one_line_error(invoke("list"))

    served = load_bundle(tmp_path / "bundle", device="cpu")
    assert served.tasks == NAMES
    assert predictions(served) == from_registry  # float32: exactly equal
    assert [p.label for p in from_registry[:4]] != [None] * 4
    assert isinstance(from_registry[2].label, float) and from_registry[0].label in ("positive", "negative")
    result = invoke(
        "predict",
        "--bundle",
        tmp_path / "bundle",
        "--task",
        "pairs",
        "--json",
        "good film",
        "great movie",
        "bad",
        "love it",
    )
    assert json.loads(result.stdout) == cli_rows
    assert [(r["text"], r["text_pair"]) for r in cli_rows] == [("good film", "great movie"), ("bad", "love it")]


def test_predict_cli_rows_and_input_file(source, tmp_path):
    invoke = source["invoke"]
    rows = [{"task": "similarity", "text": "good film", "text_pair": "bad film"}, {"text": "good great film"},
            {"task": "pairs", "text": "bad", "text_pair": "love it"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    for where in ((), ("--bundle", source["dir"]), ("--bundle", source["tar"])):
        result = invoke("predict", *where, "--input", tmp_path / "rows.jsonl", "--task", "sentiment", "--json")
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)
        assert [(r["task"], r["text"], r["text_pair"]) for r in got] == [
            ("similarity", "good film", "bad film"),
            ("sentiment", "good great film", None),
            ("pairs", "bad", "love it"),
        ]
        expected = {
            (task, text if isinstance(text, str) else tuple(text)): p
            for (task, text), p in zip(ITEMS, source["predictions"])
        }
        want = expected[("sentiment", "good great film")]
        assert got[1]["label"] == want.label and got[1]["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    table = invoke(
        "predict", "--bundle", source["dir"], "--task", "sentiment", "good great film", "not good"
    ).stdout.splitlines()
    assert table[0].split() == ["task", "label", "score", "text", "text_pair"]
    assert table[1].startswith("sentiment") and table[1].split()[1] in ("positive", "negative") and len(table) == 3

    assert one_line_error(invoke("predict", "--bundle", source["dir"], "--task", "pairs", "a", "b", "c")) == (
        "Error: task 'pairs' reads text pairs: give an even number of TEXT arguments (each text, then its pair), or "
        "use --input"
    )
    assert one_line_error(invoke("predict", "--bundle", source["dir"], "--task", "nope", "a")) == (
        f"Error: no task named 'nope' in bundle {source['dir']}; tasks in it: sentiment, pairs, similarity")
    assert one_line_error(invoke("predict", "--task", "nope", "a")) == (
        "Error: no ready task named 'nope'; known tasks: sentiment, pairs, similarity")
    assert one_line_error(invoke("predict", "--bundle", source["dir"], "a")) == "Error: TEXT arguments need --task NAME"
    (tmp_path / "bad.jsonl").write_text('{"task": "sentiment", "text": "ok"}\n{"text": "no task"}\n')
    assert one_line_error(invoke("predict", "--bundle", source["dir"], "--input", tmp_path / "bad.jsonl")) == (
        f"Error: {tmp_path / 'bad.jsonl'} line 2 names no task: add \"task\" to the row or pass --task")


def test_inputs_must_fit_the_task(source):
    served = load_bundle(source["dir"], ["sentiment", "pairs"], device="cpu")
    assert served.tasks == ["sentiment", "pairs"]
    with pytest.raises(
        DataError,
        match=r"^task 'pairs' reads a text pair \(sentence1 \+ sentence2\): give each input with its text_pair$",
    ):
        served.predict("pairs", ["only one"])
    with pytest.raises(
        DataError, match=r"^task 'sentiment' reads one text \(sentence\): give inputs without a text_pair$"
    ):
        served.predict("sentiment", [("one", "two")])
    with pytest.raises(UnknownTask, match=r"^no task named 'similarity' here; tasks: sentiment, pairs$"):
        served.predict("similarity", [("one", "two")])
    assert served.predict("sentiment", []) == []
    long = [("sentiment", INPUTS["sentiment"][3]), ("pairs", INPUTS["pairs"][2]), ("sentiment", "good")]
    encoded = served._tokenise(long, np.array([0, 1, 0]))  # each task's own max_length: 12 and 24
    assert [len(ids) for ids in encoded.input_ids] == [12, 24, 3]
    assert encoded.token_type_ids[1].tolist().count(1) > 0 and not encoded.token_type_ids[0].any()


# --------------------------------------------------------------------------------------------
# one forward pass for many tasks


def test_mixed_task_batches_equal_per_task_batches(source):
    served = load_bundle(source["dir"], device="cpu")
    passes = []
    encode = served.encode  # what predict_mixed runs each pass on (the eager model's encode here)

    def counted(*args, task_ids, **kwargs):
        passes.append(sorted(set(task_ids.tolist())))
        return encode(*args, task_ids=task_ids, **kwargs)

    served.encode = counted
    mixed = served.predict_mixed(ITEMS, batch_size=4)
    assert len(passes) == -(-len(ITEMS) // 4) and max(map(len, passes)) >= 2  # one forward pass per batch, tasks mixed
    assert sorted(set().union(*passes)) == [0, 1, 2]
    per_task = {task: iter(served.predict(task, [text for t, text in ITEMS if t == task])) for task in NAMES}
    assert_close(mixed, [next(per_task[task]) for task, _ in ITEMS], 1e-5)
    assert_close(mixed, source["predictions"], 1e-5)


def test_smaller_adapters_are_zero_padded_and_outputs_unchanged(source):
    registry = open_registry(source["settings"])
    alone = {task: live.from_registry(registry, [task], device="cpu") for task in NAMES}  # no padding: its own size
    together = live.from_registry(registry, device="cpu")
    registry.close()
    adapter = together.model.encoder.encoder.layer[0].output.dropout.adapter
    assert adapter.down_weight.shape[1:] == (32, 16) and adapter.up_weight.shape[1:] == (16, 32)
    sentiment, similarity = NAMES.index("sentiment"), NAMES.index("similarity")
    assert not adapter.down_weight[sentiment, :, 8:].any() and not adapter.up_weight[sentiment, 8:].any()
    assert not adapter.down_bias[sentiment, 8:].any() and adapter.down_weight[sentiment, :, :8].any()
    assert not adapter.down_weight[similarity, :, 12:].any() and adapter.up_weight[similarity, :12].any()
    for task in NAMES:
        items = [(t, x) for t, x in ITEMS if t == task]
        assert_close(together.predict_mixed(items), alone[task].predict_mixed(items), 1e-5)

    tensors = {
        "a.down_weight": torch.ones(4, 2),
        "a.down_bias": torch.ones(2),
        "a.up_weight": torch.ones(2, 4),
        "a.up_bias": torch.ones(4),
    }
    padded = pad_adapters(tensors, 2, 3)
    assert padded["a.down_weight"].tolist() == [[1, 1, 0]] * 4 and padded["a.down_bias"].tolist() == [1, 1, 0]
    assert padded["a.up_weight"].tolist() == [[1] * 4, [1] * 4, [0] * 4] and padded["a.up_bias"] is tensors["a.up_bias"]


# --------------------------------------------------------------------------------------------
# verification on load


def rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def refresh_hash(root: Path, name: str) -> None:
    data = (root / name).read_bytes()
    rewrite_manifest(root, lambda m: m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))


def test_tampered_file_is_refused(source, copy_of):
    path = copy_of / "adapters" / "pairs.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    message = (f"{copy_of}: file adapters/pairs.safetensors does not match its sha256 in manifest.json "
               "(corrupt or tampered): export the bundle again")
    with pytest.raises(BundleError) as error:
        load_bundle(copy_of, ["sentiment"], device="cpu")  # every file is checked, not only those served
    assert str(error.value) == message
    assert (
        one_line_error(source["invoke"]("predict", "--bundle", copy_of, "--task", "sentiment", "good"))
        == f"Error: {message}"
    )


def test_tampered_base_is_refused(source, copy_of):
    with open(copy_of / "base" / "model.safetensors", "r+b") as handle:
        handle.seek(-3, 2)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(
        BundleError,
        match="^" + str(copy_of) + ": file base/model.safetensors does not match its sha256 in manifest.json",
    ):
        load_bundle(copy_of, device="cpu")
    refresh_hash(copy_of, "base/model.safetensors")  # a manifest edited to match is still not the registry's base
    base_sha = json.loads((copy_of / "manifest.json").read_text())["base"]["sha256"]
    with pytest.raises(BundleError) as error:
        load_bundle(copy_of, device="cpu")
    assert (
        str(error.value)
        == f"{copy_of}: base/model.safetensors is not the base {base_sha[:12]} named in manifest.json: export the "
           "bundle again"
    )


def test_missing_file_is_refused(source, copy_of):
    (copy_of / "adapters" / "similarity.json").unlink()
    line = one_line_error(source["invoke"]("predict", "--bundle", copy_of, "--task", "sentiment", "good"))
    assert (
        line == f"Error: {copy_of}: file adapters/similarity.json is missing: copy the whole bundle, or export it again"
    )
    shutil.copy(source["dir"] / "adapters" / "similarity.json", copy_of / "adapters")
    shutil.rmtree(copy_of / "base")
    line = one_line_error(source["invoke"]("import", copy_of))
    assert line == f"Error: {copy_of}: file base/config.json is missing: copy the whole bundle, or export it again"
    (copy_of / "manifest.json").unlink()
    line = one_line_error(source["invoke"]("predict", "--bundle", copy_of, "--task", "sentiment", "good"))
    assert (
        line
        == f"Error: {copy_of} is not a bundle (no manifest.json): pass a directory or .tar written by `registry export`"
    )


def test_adapter_from_another_base_is_refused(source, copy_of):
    config = json.loads((copy_of / "adapters" / "pairs.json").read_text())
    config["base_sha256"] = "ab" * 32
    (copy_of / "adapters" / "pairs.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    refresh_hash(copy_of, "adapters/pairs.json")
    base_sha = json.loads((copy_of / "manifest.json").read_text())["base"]["sha256"]
    message = (f"{copy_of}: task 'pairs' was trained on base abababababab, not this bundle's base {base_sha[:12]}: "
               f"export it from a registry whose base is {base_sha[:12]}")
    with pytest.raises(BundleError) as error:
        load_bundle(copy_of, device="cpu")
    assert str(error.value) == message


def test_malformed_manifest_is_refused(copy_of):
    rewrite_manifest(copy_of, lambda m: m["tasks"][1].pop("max_length"))
    with pytest.raises(BundleError) as error:
        load_bundle(copy_of, device="cpu")
    assert (
        str(error.value)
        == f"{copy_of}: manifest.json is malformed (task 'pairs' has no 'max_length'): export the bundle again"
    )
    rewrite_manifest(copy_of, lambda m: m.pop("files"))
    with pytest.raises(BundleError, match=r"manifest.json is malformed \(no 'files'\)"):
        load_bundle(copy_of, device="cpu")
    rewrite_manifest(copy_of, lambda m: m.update(format="adapter-registry/bundle@9"))
    with pytest.raises(
        BundleError, match=r"bundle format 'adapter-registry/bundle@9' is not 'adapter-registry/bundle@1'"
    ):
        load_bundle(copy_of, device="cpu")


def test_paths_outside_the_bundle_are_refused(copy_of):
    rewrite_manifest(copy_of, lambda m: m["files"].update({"../escape": {"sha256": "0" * 64, "size": 1}}))
    with pytest.raises(
        BundleError, match=r"manifest.json is malformed \(it lists '\.\./escape', which a bundle never "
    ):
        load_bundle(copy_of, device="cpu")


# --------------------------------------------------------------------------------------------
# layout, size, dtype, archive


def bundle_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_layout_and_size_bound(trained, tmp_path):
    settings, invoke = trained
    result = invoke("export", "--output", tmp_path / "b", "--json")
    summary = json.loads(result.stdout)
    root = tmp_path / "b"
    registry = open_registry(settings)
    with registry.read() as session:
        base = registry.base(session)
        rows = ready_tasks(session, None)
    stored_adapters = {row.name: registry.store.get(row.adapter_sha256) for row in rows}
    stored_configs = {row.name: registry.store.get(row.config_sha256) for row in rows}
    base_bytes = len(registry.store.get(base.sha256))
    registry.close()

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".safetensors")] == [
        "adapters/pairs.safetensors",
        "adapters/sentiment.safetensors",
        "adapters/similarity.safetensors",
        "base/model.safetensors",
    ]
    for name in NAMES:  # exactly the stored artifacts
        assert (root / "adapters" / f"{name}.safetensors").read_bytes() == stored_adapters[name]
        assert (root / "adapters" / f"{name}.json").read_bytes() == stored_configs[name]
    adapter_bytes = sum(map(len, stored_adapters.values()))
    assert bundle_bytes(root) <= base_bytes + adapter_bytes + 1_000_000
    assert (
        summary["bytes"] == bundle_bytes(root)
        and summary["base_bytes"] == base_bytes
        and summary["adapter_bytes"] == adapter_bytes
    )

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "adapter-registry/bundle@1" and manifest["dtype"] == "float32"
    assert manifest["base"]["sha256"] == base.sha256 == manifest["files"]["base/model.safetensors"]["sha256"]
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    for name, meta in manifest["files"].items():
        assert meta == {
            "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest(),
            "size": (root / name).stat().st_size,
        }
    by_name = {t["name"]: t for t in manifest["tasks"]}
    assert [t["name"] for t in manifest["tasks"]] == NAMES and [t["position"] for t in manifest["tasks"]] == [1, 2, 3]
    assert by_name["sentiment"]["labels"] == ["negative", "positive"] and by_name["sentiment"]["text_columns"] == [
        "sentence"
    ]
    assert (by_name["similarity"]["task_type"], by_name["similarity"]["metric"], by_name["similarity"]["labels"]) == (
        "regression",
        "spearman",
        None,
    )
    assert [(t["adapter_size"], t["max_length"]) for t in manifest["tasks"]] == [(8, 12), (16, 24), (12, 20)]
    assert [(t["name"], t["score"]) for t in manifest["tasks"]] == [(row[1], row[4]) for row in listed(invoke)]

    from transformers import AutoModel

    model = AutoModel.from_pretrained(root / "base")
    assert model.config.model_type == "bert" and model.dtype == torch.float32


def test_float16_halves_the_size_and_predicts_within_tolerance(source, tmp_path):
    invoke = source["invoke"]
    assert invoke("export", "--output", tmp_path / "full").exit_code == 0
    result = invoke("export", "--output", tmp_path / "half", "--dtype", "float16", "--json")
    assert json.loads(result.stdout)["dtype"] == "float16"
    full, half = tmp_path / "full", tmp_path / "half"
    weights = ["base/model.safetensors", *(f"adapters/{task}.safetensors" for task in NAMES)]
    for name in weights:
        halved, whole = safetensors.torch.load_file(half / name), safetensors.torch.load_file(full / name)
        assert {v.dtype for v in halved.values()} == {torch.float16} and {v.dtype for v in whole.values()} == {
            torch.float32
        }
        assert sum(v.nbytes for v in halved.values()) * 2 == sum(v.nbytes for v in whole.values())
    # the tiny model's files are mostly safetensors headers and tokenizer files; MiniLM's halve (bench/bundle.py)
    assert sum((half / n).stat().st_size for n in weights) < 0.6 * sum((full / n).stat().st_size for n in weights)
    assert bundle_bytes(half) < 0.75 * bundle_bytes(full)
    assert json.loads((half / "manifest.json").read_text())["dtype"] == "float16"
    from transformers import AutoModel

    assert AutoModel.from_pretrained(half / "base").dtype == torch.float16
    assert_close(
        predictions(load_bundle(half, device="cpu")),
        predictions(load_bundle(full, device="cpu")),
        FLOAT16_TOLERANCE,
    )
    assert_close(
        predictions(load_bundle(half, device="cpu", dtype="float16")),
        predictions(load_bundle(full, device="cpu")),
        FLOAT16_TOLERANCE,
    )


def test_archive_round_trip(source, tmp_path):
    invoke = source["invoke"]
    result = invoke("export", "--output", tmp_path / "b", "--archive", "--json")
    assert result.exit_code == 0, result.output
    archive = tmp_path / "b.tar"
    assert json.loads(result.stdout)["output"] == str(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar"]  # no temporary left behind
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "b/manifest.json" in names and "b/base/model.safetensors" in names and len(names) == len(set(names))
    invoke("export", "--output", tmp_path / "d")
    assert predictions(load_bundle(archive, device="cpu")) == predictions(load_bundle(tmp_path / "d", device="cpu"))
    assert one_line_error(invoke("export", "--output", archive, "--archive")) == (
        f"Error: {archive} already exists: pass --force to replace it, or choose another --output")
    assert invoke("export", "--output", archive, "--archive", "--force", "--tasks", "pairs").exit_code == 0
    assert load_bundle(archive, device="cpu").tasks == ["pairs"]


def test_existing_output_is_refused_unless_force(trained, tmp_path):
    settings, invoke = trained
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    line = one_line_error(invoke("export", "--output", output))
    assert line == f"Error: {output} already exists: pass --force to replace it, or choose another --output"
    assert [p.name for p in output.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    line = one_line_error(invoke("export", "--output", output, "--force"))  # replaces a bundle, not the user's files
    assert line == (f"Error: {output} is not a bundle (it holds files no bundle manifest lists): "
                    "--force replaces only a bundle written by `registry export`; choose another --output")
    assert [p.name for p in output.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (output / "keep.txt").unlink()
    assert invoke("export", "--output", output, "--force").exit_code == 0  # an empty directory holds nothing to lose
    assert invoke("export", "--output", output, "--force", "--tasks", "similarity,sentiment").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert load_bundle(output, device="cpu").tasks == ["sentiment", "similarity"]  # registry order


def test_unknown_task_name_is_refused(trained, tmp_path):
    settings, invoke = trained
    line = one_line_error(invoke("export", "--tasks", "sentiment,nope", "--output", tmp_path / "b"))
    assert line == "Error: no ready task named 'nope'; known tasks: sentiment, pairs, similarity"
    assert (
        one_line_error(invoke("export", "--tasks", ",", "--output", tmp_path / "b"))
        == "Error: no task named: pass all, or NAME,NAME…"
    )
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_corrupt_artifact_leaves_nothing(invoke, settings, source, tmp_path):
    assert invoke("import", source["dir"]).exit_code == 0
    sha = json.loads(invoke("show", "pairs", "--json").stdout)["adapter_sha256"]
    stored = Path(settings.store_url) / sha[:2] / sha
    stored.write_bytes(stored.read_bytes()[:-1] + b"!")
    line = one_line_error(invoke("export", "--output", tmp_path / "out" / "b", "--archive"))
    assert line == (
        f"Error: cannot export task 'pairs': artifact {sha[:12]} in {settings.store_url} does not match its sha256 "
        "(corrupt or tampered): run `registry verify`; export the other tasks with --tasks"
    )
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------------------------
# import


def test_import_into_an_empty_registry(invoke, settings, source):
    result = invoke("import", source["tar"], "--json")
    assert result.exit_code == 0, result.output
    imported = json.loads(result.stdout)
    assert imported["initialised"] is True and [t["name"] for t in imported["tasks"]] == NAMES
    assert listed(invoke) == source["list"]
    registry = open_registry(settings)
    with registry.read() as session:
        base = registry.base(session)
    assert base.sha256 == json.loads((source["dir"] / "manifest.json").read_text())["base"]["sha256"]
    assert predictions(live.from_registry(registry, device="cpu")) == source["predictions"]
    with registry.query() as connection:  # bundles carry no text embeddings: auto ranks these tasks by LogME
        assert connection.execute(text("SELECT embedding_sha256 FROM task_versions")).all() == [(None,)] * 3
    registry.close()
    show = json.loads(invoke("show", "pairs", "--json").stdout)
    manifest = {t["name"]: t for t in json.loads((source["dir"] / "manifest.json").read_text())["tasks"]}
    assert (show["adapter_sha256"], show["config_sha256"]) == (
        manifest["pairs"]["adapter_sha256"],
        manifest["pairs"]["config_sha256"],
    )
    evaluated = invoke("eval", "sentiment", "--json")  # the imported task trains on nothing but evaluates as before
    assert json.loads(evaluated.stdout)["score"] == manifest["sentiment"]["score"]


def test_import_appends_and_a_name_clash_changes_nothing(invoke, settings, source, tiny_base, datasets_dir, tmp_path):
    assert invoke("init", "--base", tiny_base).exit_code == 0
    assert invoke("add-task", "own", "--data", datasets_dir / "sentiment", "--epochs", "1", "-q").exit_code == 0
    table = invoke("import", source["dir"]).stdout.splitlines()
    assert [line.split()[:2] for line in table[1:]] == [["2", "sentiment"], ["3", "pairs"], ["4", "similarity"]]
    assert [row[:2] for row in listed(invoke)] == [(1, "own"), (2, "sentiment"), (3, "pairs"), (4, "similarity")]

    before = snapshot(settings)
    line = one_line_error(invoke("import", source["tar"]))
    assert line == (
        f"Error: cannot import {source['tar']}: the registry already has task(s) 'sentiment', 'pairs', 'similarity': "
        "import into another registry (--home), or export the bundle without them (--tasks)"
    )
    assert snapshot(settings) == before
    assert invoke("export", "--output", tmp_path / "mine", "--tasks", "own,pairs").exit_code == 0
    assert one_line_error(invoke("import", tmp_path / "mine")).startswith(
        f"Error: cannot import {tmp_path / 'mine'}: the registry already has task(s) 'own', 'pairs':"
    )
    assert snapshot(settings) == before


def test_import_refuses_another_base_and_float16(invoke, settings, source, tiny_base, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base, other)
    from transformers import BertModel

    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(1.0)
    model.save_pretrained(other)
    assert invoke("init", "--base", other).exit_code == 0
    before = snapshot(settings)
    manifest = json.loads((source["dir"] / "manifest.json").read_text())
    with open_registry(settings).read() as session:
        ours = session.scalar(text("SELECT sha256 FROM bases"))
    line = one_line_error(invoke("import", source["dir"]))
    assert line == (
        f"Error: {source['dir']} is built on base {manifest['base']['sha256'][:12]}, this registry's base is "
        f"{ours[:12]}: import it into a registry with that base, or a new one (--home)"
    )
    line = one_line_error(invoke("import", source["half"]))
    assert line == (f"Error: {source['half']} holds float16 weights, which can be served but not imported "
                    "(the registry keeps the exact float32 artifacts): export it again with --dtype float32")
    assert snapshot(settings) == before


def test_not_a_bundle(source, tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar")
    line = one_line_error(source["invoke"]("predict", "--bundle", tmp_path / "x.tar", "--task", "a", "b"))
    assert line == f"Error: {tmp_path / 'x.tar'} is not a bundle: pass a directory or .tar written by `registry export`"
