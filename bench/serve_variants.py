"""What else was tried for the served model, side by side in one process: torch.compile on the eager path, and int8
dynamic quantisation of the frozen base (ONNX Runtime's `quantize_dynamic` on the exported routed graph; torch.ao's
`quantize_dynamic` on the eager encoder's Linear layers). Called by bench.serve_ort; alone:

    python -m bench.serve_variants --workdir DIR     # DIR as bench.serve_ort's: its registry and bundle

Each variant is the bundle's Predictor with another encoder (adapters, LayerNorms and heads stay float). Throughput:
the first 5 windows of 32 of the server's inputs (the five dev sets interleaved) through `predict_mixed` as the server
runs a window (sorted by length, cut into passes), after one warm-up window. Outputs: the largest difference of any
probability or regression value from eager float's on those inputs, and whether every label is the same. Scores:
every task's whole GLUE dev set, in points (metric x 100), for float (ONNX Runtime's: eager's within 1e-4) and for
each lossy variant faster than float ONNX Runtime (a slower one could not be kept whatever its scores); a lossy
variant would be kept only if every task stays within 0.5 points of float.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

WINDOW = 32
WINDOWS = 5  # windows of the server's inputs timed per variant (the machine is shared and eager is slow)
SETUP_SECONDS = 300  # for a variant to be built and run its warm-up window (torch.compile compiles then)
KEEP_WITHIN_POINTS = 0.5


def dev_sets(home: Path, names: list[str]) -> dict[str, dict]:
    """Each task's whole validation split: its items, references (class index or value), metric and labels."""
    from registry.catalog.queries import find_task
    from registry.data import splits
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    registry = open_registry(resolve(home=home))
    sets = {}
    for name in names:
        with registry.read() as session:
            task = find_task(session, name, ready=True)
        loaded = splits.load_validation(task.data_source, text_columns=task.text_columns,
                                        label_column=task.label_column, task_type=task.task_type, labels=task.labels,
                                        metric=task.metric)
        columns = [loaded.validation[column].to_pylist() for column in task.text_columns]
        sets[name] = {"items": [(name, texts[0] if len(texts) == 1 else tuple(texts)) for texts in zip(*columns)],
                      "references": np.asarray(loaded.validation[task.label_column].to_numpy()),
                      "metric": task.metric, "labels": task.labels}
    registry.close()
    return sets


def onnx_int8(predictor) -> None:
    """`predictor` on ONNX Runtime with the base's MatMul weights quantised to int8 (dynamic activations)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from registry.serving.onnx_backend import PASS_COST_TOKENS, OnnxEncoder, export, session_options

    data, names = export(predictor.model)
    folder = Path(tempfile.mkdtemp(prefix="onnx-int8-"))
    (folder / "float.onnx").write_bytes(data)
    quantize_dynamic(folder / "float.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    session = onnxruntime.InferenceSession(str(folder / "int8.onnx"), session_options(),
                                           providers=["CPUExecutionProvider"])
    shared = SimpleNamespace(session=session, names=names, inputs=[i.name for i in session.get_inputs()])
    predictor.use_encoder(OnnxEncoder(shared, predictor.model), "onnx-int8", PASS_COST_TOKENS)


def eager_int8(predictor) -> None:
    """`predictor` in PyTorch with the encoder's Linear layers (the frozen base's) int8 (torch.ao dynamic)."""
    import torch

    torch.ao.quantization.quantize_dynamic(predictor.model.encoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def compiled(predictor) -> None:
    """`predictor`'s eager encode under torch.compile (inductor, dynamic shapes)."""
    import torch

    from registry.data.encoding import PASS_COST_TOKENS

    predictor.use_encoder(torch.compile(predictor.model.encode, dynamic=True), "eager-compiled", PASS_COST_TOKENS)


def onnx_float(predictor) -> None:
    from registry.serving.onnx_backend import accelerate

    accelerate(predictor, "onnx")


VARIANTS = {  # name: (how the predictor is changed, lossy: scored against float)
    "eager (float)": (None, False),
    "eager + torch.compile": (compiled, False),
    "onnx (float)": (onnx_float, False),
    "onnx, base int8 (quantize_dynamic)": (onnx_int8, True),
    "eager, base int8 (torch.ao)": (eager_int8, True),
}
FLOAT = "onnx (float)"  # the float scores and the throughput a lossy variant must beat


@contextmanager
def within(seconds: int):
    """TimeoutError in this (the main) thread when the block runs past `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"not ready within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def windows(predictor, items: list, window: int = WINDOW) -> list:
    """Predictions for `items`, a window of `window` at a time, as the server runs them."""
    return [p for start in range(0, len(items), window)
            for p in predictor.predict_mixed(items[start:start + window], batch_size=window, max_tokens=8192)]


def points(predictor, dev: dict) -> float:
    """The task's metric on its dev set x 100."""
    from registry.data import metrics

    predictions = windows(predictor, dev["items"])
    if dev["labels"] is None:
        values = [p.label for p in predictions]
    else:
        values = [dev["labels"].index(p.label) for p in predictions]
    return 100 * metrics.compute(dev["metric"], np.asarray(values), dev["references"])[dev["metric"]]


def differences(got: list, want: list) -> tuple[float, bool]:
    """The largest difference of a probability (or regression value), and whether every label is the same."""
    worst, same = 0.0, True
    for g, w in zip(got, want):
        if w.probabilities is None:
            worst = max(worst, abs(g.label - w.label))
        else:
            same &= g.label == w.label
            worst = max(worst, max(abs(g.probabilities[k] - w.probabilities[k]) for k in w.probabilities))
    return worst, same


def tried(bundle: Path, home: Path, items: list, names: list[str], *, score: bool = True) -> list[dict]:
    """Each variant: inputs/s on `items` (windows of 32), outputs against eager float's, and (`score`) per-task dev
    points; a variant that fails to build is reported with its error."""
    from registry.serving.loading import load

    sets = dev_sets(home, names) if score else {}
    items = items[:WINDOW * WINDOWS]
    rows, reference, float_points = [], None, {}
    for name, (change, lossy) in VARIANTS.items():
        predictor = load(bundle, device="cpu")
        row = {"variant": name, "lossy": lossy}
        try:
            started = time.perf_counter()
            with within(SETUP_SECONDS):
                if change is not None:
                    change(predictor)
                windows(predictor, items[:WINDOW])  # warm-up (and torch.compile's compiling)
            row["setup_s"] = time.perf_counter() - started
            started = time.perf_counter()
            got = windows(predictor, items)
            row["throughput"] = len(items) / (time.perf_counter() - started)
        except Exception as exc:  # a variant that cannot run is a result too
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            print(f"{name}: {row['error']}", file=sys.stderr)
            continue
        reference = reference or got
        row["max_diff"], row["same_labels"] = differences(got, reference)
        fastest_float = next((r["throughput"] for r in rows if r["variant"] == FLOAT and "throughput" in r), 0.0)
        if score and (name == FLOAT or (lossy and float_points and row["throughput"] > fastest_float)):
            row["points"] = {task: points(predictor, dev) for task, dev in sets.items()}
            float_points = float_points or row["points"]
            row["worst_drop"] = max(float_points[t] - row["points"][t] for t in row["points"])
        rows.append(row)
        print(f"{name}: {row}", file=sys.stderr)
    return rows


def table(rows: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """A markdown table's header and rows: inputs/s, x eager, outputs against eager float, dev points per task."""
    eager = next(row["throughput"] for row in rows if row["variant"] == "eager (float)")
    fastest = next((row["throughput"] for row in rows if row["variant"] == FLOAT and "throughput" in row), 0.0)
    header = ["variant", "inputs/s", "vs eager", "setup s", "max prob. diff", "labels", *names, "kept"]
    out = []
    for row in rows:
        if "error" in row:
            out.append([row["variant"], "failed: " + row["error"], *[""] * (len(header) - 2)])
            continue
        scored = [f"{row['points'][t]:.1f}" if "points" in row else "" for t in names]
        out.append([row["variant"], f"{row['throughput']:.0f}", f"{row['throughput'] / eager:.2f}x",
                    f"{row['setup_s']:.1f}", f"{row['max_diff']:.1e}", "same" if row["same_labels"] else "differ",
                    *scored, verdict(row, fastest)])
    return header, out


def verdict(row: dict, fastest: float) -> str:
    """Kept or not, and why: float is kept as the backends; another must beat onnx (float), and a lossy one must stay
    within 0.5 points of it on every task."""
    if row["variant"] in ("eager (float)", FLOAT):
        return "yes (`--backend eager`, `onnx`)"
    if row["throughput"] <= fastest:
        return "no: slower than onnx (float)"
    if not row["lossy"]:
        return "faster than onnx (float)"
    if "worst_drop" not in row:
        return "not scored"
    within = row["worst_drop"] <= KEEP_WITHIN_POINTS
    return f"{'within' if within else 'no: beyond'} 0.5 points (worst drop {row['worst_drop']:.1f})"


def main(argv: list[str] | None = None) -> None:
    from bench.bundle import TASKS
    from bench.common import markdown_table
    from bench.serve_ort import arrival
    from bench.bundle import sample_items
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    parser = argparse.ArgumentParser(prog="python -m bench.serve_variants", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="bench.serve_ort's --workdir (trained, exported).")
    parser.add_argument("--per-task", type=int, default=100, help="Dev rows per task for the throughput inputs.")
    parser.add_argument("--no-scores", action="store_true", help="Throughput and outputs only.")
    args = parser.parse_args(argv)
    names = [name for name, _ in TASKS]
    registry = open_registry(resolve(home=args.workdir / "registry"))
    items = arrival(sample_items(registry, names, args.per_task), names)
    registry.close()
    rows = tried(args.workdir / "bundle", args.workdir / "registry", items, names, score=not args.no_scores)
    print(markdown_table(*table(rows, names)))


if __name__ == "__main__":
    main()
