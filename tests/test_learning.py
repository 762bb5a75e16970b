"""That training learns, the learning-rate schedule's shape, and the continual-learning arithmetic (ACC, BWT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sqlalchemy import text

from registry.data import encoding
from registry.training import train
from registry.model.adapters import AdapterModel
from registry.storage.core import open_registry
from tests.helpers import TINY_WORDS, sentiment_rows


# --------------------------------------------------------------------------------------------
# the schedule


@pytest.mark.parametrize(("total", "warmup"), [(100, 0.1), (37, 0.25), (10, 0.0), (1, 0.1)])
def test_schedule_warms_up_linearly_then_decays_linearly_to_zero(total, warmup):
    values = [train.schedule(step, total, warmup) for step in range(total)]
    warm = max(1, int(np.ceil(total * warmup)))
    assert values[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])  # rises to the peak ...
    assert values[warm - 1] == 1.0 and max(values) == 1.0
    decay = values[warm - 1:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # ... then falls, never rises again
    steps = np.diff(decay[1:]) if len(decay) > 2 else np.zeros(0)
    assert np.allclose(steps, steps[:1])  # at a constant rate (linear)
    assert train.schedule(total, total, warmup) == 0.0  # and reaches zero at the end


# --------------------------------------------------------------------------------------------
# training learns


@pytest.fixture(scope="module")
def tiny(tiny_base):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)

    def split(n: int, seed: int) -> encoding.Encoded:
        import pyarrow as pa

        rows = sentiment_rows(n, seed)
        table = pa.table({"sentence": [s for s, _ in rows], "label": pa.array([y for _, y in rows], pa.int64())})
        return encoding.encode(table, ["sentence"], tokenizer, max_length=32, cache_dir=None, cache_key="")

    def model(seed: int) -> AdapterModel:
        torch.manual_seed(seed)
        return AdapterModel(AutoModel.from_pretrained(tiny_base), 32, [2])

    return split, model, tokenizer.pad_token_id


def test_the_tiny_tokenizer_knows_its_words(tiny_base):
    """Every word of the tiny vocabulary is one token, so the tiny model sees the words, not [UNK]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert tokenizer.tokenize(" ".join(TINY_WORDS)) == TINY_WORDS
    assert tokenizer.unk_token_id not in tokenizer(" ".join(TINY_WORDS))["input_ids"]


@pytest.mark.parametrize("seed", [0, 1])
def test_training_lowers_the_loss_and_beats_chance_by_far_on_a_separable_task(tiny, seed):
    """Labels follow the words (sentiment_rows): chance is about 0.5; the trained adapter must reach 0.9."""
    split, model, pad_id = tiny
    config = train.TrainConfig(epochs=15, lr=1e-2, batch_size=16, adapter_size=32, max_length=32, seed=seed)
    validation = split(100, seed + 100)
    chance = max(np.bincount(validation.labels)) / len(validation.labels)
    result = train.fit(model(seed), split(200, seed), validation, config, task_type="classification",
                       metric="accuracy", pad_id=pad_id, device=torch.device("cpu"))
    losses = [epoch.train_loss for epoch in result.epochs]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.best_score >= 0.9 > chance + 0.3, (result.best_score, chance)


# --------------------------------------------------------------------------------------------
# ACC and BWT of the score matrix (GEM, Lopez-Paz & Ranzato 2017)


def test_score_matrix_acc_and_bwt_arithmetic(run_cli, settings, tiny_base, tmp_path):
    """Three tasks with chosen scores: R[i][j] is task j's latest score with i+1 tasks present (the diagonal
    falls back to the published score); ACC is the mean of the last row; BWT the mean of R[T-1][j] - R[j][j], j < T-1.
    """
    from registry.catalog.queries import score_matrix

    data = tmp_path / "data.tsv"
    data.write_text("sentence\tlabel\n" + "\n".join(f"{s}\t{y}" for s, y in sentiment_rows(40, 0)) + "\n")
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    for name in ("a", "b", "c"):
        assert run_cli("add-task", name, "--data", str(data), "--epochs", "1").exit_code == 0
    registry = open_registry(settings)
    published = {"a": 0.8, "b": 0.6, "c": 0.5}
    evaluations = [("a", 2, 0.7), ("a", 3, 0.1), ("a", 3, 0.75), ("b", 3, 0.5)]  # the later (a, 3) wins
    with registry.write() as session:
        for name, score in published.items():
            session.execute(text("UPDATE tasks SET score = :score WHERE name = :name"), {"score": score, "name": name})
        for name, present, score in evaluations:
            session.execute(
                text(
                    "INSERT INTO evaluations (task_id, adapter_sha256, tasks_present, score, created_at) "
                    "SELECT id, adapter_sha256, :present, :score, created_at FROM tasks WHERE name = :name"
                ),
                {"present": present, "score": score, "name": name},
            )
    result = score_matrix(registry)
    registry.close()
    assert result["tasks"] == ["a", "b", "c"]
    assert result["matrix"] == [[0.8, None, None], [0.7, 0.6, None], [0.75, 0.5, 0.5]]
    assert result["acc"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert result["bwt"] == pytest.approx(((0.75 - 0.8) + (0.5 - 0.6)) / 2)
    printed = json.loads(run_cli("history", "--matrix", "--json").stdout)
    assert printed["acc"] == pytest.approx(result["acc"]) and printed["bwt"] == pytest.approx(result["bwt"])
