"""The ONNX Runtime backend answers as PyTorch eager does: labels identical, probabilities within 1e-4.

Tiny random bases (BERT with segment ids, DistilBERT without), three tasks of different bottleneck sizes and
heads with non-trivial adapter weights, mixed in one call. (The served path, on both dialects, is in test_serve.py.)
"""

from __future__ import annotations

import pytest
import torch

from registry.model.adapters import AdapterModel
from registry.data.encoding import PASS_COST_TOKENS
from registry.errors import DataError
from registry.serving.onnx_backend import accelerate, session_of
from registry.serving.predictor import FrozenBase, Predictor, Tally, TaskSpec
from tests.helpers import write_tiny_family

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (make install)")

WORDS = "good great bad awful love hate film movie not very".split()


def specs(pair_size: int = 4) -> list[TaskSpec]:
    return [
        TaskSpec("sentiment", "classification", ("negative", "positive"), ("sentence",), 8, 12, "x"),
        TaskSpec("pairs", "classification", ("0", "1", "2"), ("a", "b"), pair_size, 24, "x"),
        TaskSpec("similarity", "regression", None, ("a", "b"), 6, 20, "x"),
    ]


def states(base: FrozenBase, tasks: list[TaskSpec], seed: int) -> list[dict[str, torch.Tensor]]:
    """Random task tensors far from the identity adapter, so that a routing mistake changes the answers."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the adapters' initialisation
    out = []
    for spec in tasks:
        state = AdapterModel(base.encoder_copy(), spec.adapter_size, [spec.head_size]).task_state_dict(0)
        out.append({key: value + 0.3 * torch.randn(value.shape, generator=generator) for key, value in state.items()})
    return out


def items(n: int = 60) -> list[tuple[str, object]]:
    rows = []
    for i in range(n):
        text = " ".join(WORDS[(i + k) % 10] for k in range(1 + (7 * i) % 19))
        pair = " ".join(WORDS[(3 * i + k) % 10] for k in range(1 + i % 5))
        rows.append(("sentiment", text) if i % 3 == 0 else ("pairs" if i % 3 == 1 else "similarity", (text, pair)))
    return rows


def assert_equal(got, want) -> None:
    assert [(p.task, p.label) for p in got if p.probabilities] == [(p.task, p.label) for p in want if p.probabilities]
    for g, w in zip(got, want):
        if w.probabilities is None:
            assert g.label == pytest.approx(w.label, abs=1e-4)
        else:
            assert g.probabilities == pytest.approx(w.probabilities, abs=1e-4)


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def base(request, tiny_base, tmp_path_factory) -> FrozenBase:
    path = tiny_base if request.param == "bert" else write_tiny_family(tmp_path_factory.mktemp("tiny"), "distilbert")
    return FrozenBase(path, device="cpu")


def test_onnx_answers_as_eager_on_every_task_and_task_set(base):
    tasks = specs()
    eager = Predictor(base, tasks, states(base, tasks, 1))
    fast = accelerate(Predictor(base, tasks, states(base, tasks, 1)), "onnx")
    assert (eager.backend, fast.backend) == ("eager", "onnx")
    assert fast.pass_cost < PASS_COST_TOKENS
    rows = items()
    tally = Tally()
    assert_equal(fast.predict_mixed(rows, batch_size=16, max_tokens=256, tally=tally), eager.predict_mixed(rows))
    assert tally.passes >= 4 and 0 < tally.tokens < tally.slots
    # Another task set on the same base (a task dropped, one with a wider bottleneck) reuses the exported graph.
    wider = [tasks[0], specs(pair_size=12)[1]]
    again = accelerate(Predictor(base, wider, states(base, wider, 2)), "onnx")
    assert session_of(base, again.model) is session_of(base, fast.model)
    kept = [row for row in rows if row[0] != "similarity"]
    assert_equal(again.predict_mixed(kept), Predictor(base, wider, states(base, wider, 2)).predict_mixed(kept))


def test_one_input_runs_without_padding(base):
    fast = accelerate(Predictor(base, specs(), states(base, specs(), 1)), "onnx")
    tally = Tally()
    fast.predict_mixed([("sentiment", "good film")], tally=tally)
    assert tally.passes == 1 and tally.tokens == tally.slots and tally.padding == 0


def test_an_unknown_backend_is_refused(base):
    with pytest.raises(DataError, match="unknown backend 'fast'"):
        accelerate(Predictor(base, specs(), states(base, specs(), 1)), "fast")
