"""Scale: does the registry slow down as it fills?

    python -m bench.scale            # about 5 minutes on 2 CPU cores
    python -m bench.scale --quick    # under a minute: the 5th task, 100 tasks, 5 runs a command

(a) add-task time of the 20th task / the 1st, on a tiny random BERT (library calls, temporary
    registries). Each round copies a registry holding 0 tasks and one holding 19 (base already
    unpacked in both, untimed) and adds the same new task to each, alternating which goes first.
(b) `registry list --json`, `registry history NAME --json` and `registry history --json` with
    1,000 tasks × 100 metric rows / with 1 task × 100 rows: the real CLI in subprocesses, the database
    filled by bulk SQLAlchemy inserts of realistic rows, all commands interleaved, ≥ 10 runs each.
(c) `registry list` / `python -c "import sqlalchemy, click"`, the same way.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench import common
from tests.helpers import write_tiny_bert

HEADING = "Scale: add-task, list and history as the registry fills"
GOALS = {"add": 1.1, "read": 2.0, "startup": 1.5}
POSITIVE = "good great love very good film".split()
NEGATIVE = "bad awful hate not good movie".split()


# --- fixtures: a tiny base and small tasks -----------------------------------------------------

def task_data(directory: Path, seed: int, train_rows: int, dev_rows: int) -> Path:
    """A sentiment task (train.tsv, dev.tsv) whose rows differ with the seed, so no token cache is shared."""
    rng = random.Random(seed)
    for split, n in (("train", train_rows), ("dev", dev_rows)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.choices(POSITIVE if label else NEGATIVE, k=5) + rng.choices(["the", "a", "this", "it"], k=2)
            rng.shuffle(words)
            rows.append(f"{' '.join(words)}\t{label}")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def init_registry(home: Path, base: Path):
    """A new registry at `home` on `base`, its base unpacked into the cache; returns its Settings."""
    from registry.model import checkpoint
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    settings = resolve(home=home)
    checkpoint.init(settings, str(base))
    registry = open_registry(settings)
    try:
        with registry.read() as session:
            checkpoint.unpack(registry, registry.base(session))
    finally:
        registry.close()
    return settings


def add(home: Path, name: str, data: Path, epochs: int) -> float:
    """Seconds of one `add_task` library call on the registry at `home` (opening it is not timed)."""
    from registry.storage.config import resolve
    from registry.storage.core import open_registry
    from registry.training.tasks import add_task
    from registry.training.train import TrainConfig

    registry = open_registry(resolve(home=home))
    try:
        started = time.perf_counter()
        add_task(registry, name, str(data), TrainConfig(epochs=epochs))
        return time.perf_counter() - started
    finally:
        registry.close()


# --- (a) add-task: the n-th task vs the first ----------------------------------------------------

def bench_add(work: Path, n_th: int, rounds: int, rows: int, epochs: int) -> dict:
    base = write_tiny_bert(work / "tiny-base")
    empty = work / "empty"
    init_registry(empty, base)
    warm = work / "warm-up"
    shutil.copytree(empty, warm)
    add(warm, "warm-up", task_data(work / "data" / "warm-up", 10_000, rows, rows // 4), epochs)  # imports, lazy init

    filled = work / "filled"
    shutil.copytree(empty, filled)
    fill = [add(filled, f"task-{i:02d}", task_data(work / "data" / f"fill-{i}", i, rows, rows // 4), epochs)
            for i in range(1, n_th)]

    times: dict[str, list[float]] = {"first": [], "nth": []}
    sources = {"first": empty, "nth": filled}
    for round_ in range(rounds):
        data = task_data(work / "data" / f"round-{round_}", 1_000 + round_, rows, rows // 4)
        for side in (("first", "nth") if round_ % 2 == 0 else ("nth", "first")):
            home = work / f"round-{round_}-{side}"
            shutil.copytree(sources[side], home)
            times[side].append(add(home, f"new-{round_}", data, epochs))
            shutil.rmtree(home)
    ratio = common.median(times["nth"]) / common.median(times["first"])
    return {"times": times, "fill": fill, "ratio": ratio}


# --- (b) list and history with many tasks --------------------------------------------------------

def populate(settings, n_tasks: int, metrics_per_task: int, seed: int = 0) -> None:
    """Ready tasks with one succeeded run, evaluations and metric rows, inserted in bulk as add-task and eval write
    them."""
    from sqlalchemy import insert

    from registry.storage.core import open_registry
    from registry.storage.models import Artifact, Evaluation, Metric, Run, Task
    from registry.storage.schema import utcnow

    rng = random.Random(seed)
    registry = open_registry(settings)
    now = utcnow()
    evaluations_per_task = 5
    epochs = (metrics_per_task - 2 * evaluations_per_task) // 3  # loss, mcc, accuracy per epoch
    hyperparams = {"epochs": epochs, "lr": 1e-3, "batch_size": 32, "adapter_size": 64, "max_length": 128,
                   "warmup": 0.1, "seed": 0}
    versions = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.24.0"}
    try:
        with registry.write() as session:
            base_id = registry.base(session).id
            artifacts, tasks, runs, evaluations, metrics = [], [], [], [], []
            for t in range(1, n_tasks + 1):
                adapter_sha, config_sha = f"{rng.getrandbits(256):064x}", f"{rng.getrandbits(256):064x}"
                artifacts += [{"sha256": adapter_sha, "kind": "adapter", "size": 2_430_000, "created_at": now},
                              {"sha256": config_sha, "kind": "adapter-config", "size": 420, "created_at": now}]
                created = now - timedelta(hours=n_tasks - t + 1)
                score = rng.uniform(0.2, 0.9)
                tasks.append({"id": t, "name": f"task-{t:04d}", "position": t, "base_id": base_id, "status": "ready",
                              "data_source": f"/data/glue/task-{t:04d}", "task_type": "classification", "metric": "mcc",
                              "text_columns": ["sentence"], "label_column": "label", "labels": ["0", "1"],
                              "adapter_size": 64, "adapter_sha256": adapter_sha, "config_sha256": config_sha,
                              "score": score, "trainable_params": 605_186, "created_at": created,
                              "ready_at": created + timedelta(minutes=5)})
                runs.append(
                    {
                        "id": t,
                        "task_id": t,
                        "status": "succeeded",
                        "hyperparams": hyperparams,
                        "seed": 0,
                        "versions": versions,
                        "device": "cpu",
                        "host": "bench",
                        "pid": 1000 + t,
                        "data_fingerprint": f"{rng.getrandbits(256):064x}",
                        "validation_from": "dev.tsv",
                        "trainable_params": 605_186,
                        "score": score,
                        "best_epoch": 2,
                        "adapter_sha256": adapter_sha,
                        "started_at": created,
                        "heartbeat_at": created + timedelta(minutes=5),
                        "finished_at": created + timedelta(minutes=5),
                    }
                )
                for epoch in range(1, epochs + 1):
                    at = created + timedelta(seconds=10 * epoch)
                    for key, split in (("loss", "train"), ("mcc", "validation"), ("accuracy", "validation")):
                        metrics.append({"task_id": t, "run_id": t, "evaluation_id": None, "key": key, "split": split,
                                        "epoch": epoch, "step": None, "value": rng.random(), "recorded_at": at})
                for e in range(evaluations_per_task):
                    evaluation_id = (t - 1) * evaluations_per_task + e + 1
                    at = created + timedelta(hours=e + 1)
                    evaluations.append({"id": evaluation_id, "task_id": t, "adapter_sha256": adapter_sha,
                                        "tasks_present": t + e, "data_fingerprint": runs[-1]["data_fingerprint"],
                                        "score": score, "created_at": at})
                    for key in ("mcc", "accuracy"):
                        metrics.append({"task_id": t, "run_id": None, "evaluation_id": evaluation_id, "key": key,
                                        "split": "validation", "epoch": None, "step": None, "value": rng.random(),
                                        "recorded_at": at})
            for model, rows in (
                (Artifact, artifacts),
                (Task, tasks),
                (Run, runs),
                (Evaluation, evaluations),
                (Metric, metrics),
            ):
                session.execute(insert(model), rows)
    finally:
        registry.close()


def bench_reads(work: Path, n_tasks: int, metrics_per_task: int, runs: int) -> dict:
    base = write_tiny_bert(work / "tiny-base")
    homes = {"1 task": work / "one", f"{n_tasks:,} tasks": work / "many"}
    for home, n in zip(homes.values(), (1, n_tasks)):
        populate(init_registry(home, base), n, metrics_per_task)
    registry = common.registry_command()
    middle = f"task-{(n_tasks + 1) // 2:04d}"
    commands = {}
    for label, home in homes.items():
        name = "task-0001" if label == "1 task" else middle
        commands[("list --json", label)] = [*registry, "--home", str(home), "list", "--json"]
        commands[("history NAME --json", label)] = [*registry, "--home", str(home), "history", name, "--json"]
        commands[("history --json", label)] = [*registry, "--home", str(home), "history", "--json"]
    commands[("list", "1 task")] = [*registry, "--home", str(homes["1 task"]), "list"]
    commands[("python -c 'import sqlalchemy, click'", "")] = [sys.executable, "-c", "import sqlalchemy, click"]
    times = common.time_commands(commands, runs, env=common.offline_env(), cwd=common.REPO)
    sizes = {key: len(subprocess.run(argv, capture_output=True, env=common.offline_env(), cwd=common.REPO).stdout)
             for key, argv in commands.items()}
    return {"times": times, "sizes": sizes, "labels": list(homes)}


# --- report --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nth", type=int, help="Compare the add-task of this task with the first (default 20, --quick 5)."
    )
    parser.add_argument("--rounds", type=int, help="Rounds of (a) (default 20, --quick 3).")
    parser.add_argument("--tasks", type=int, help="Tasks in the big registry of (b) (default 1000, --quick 100).")
    parser.add_argument("--metrics-per-task", type=int, default=100)
    parser.add_argument("--runs", type=int, help="Runs of each command in (b) and (c) (default 15, --quick 5).")
    parser.add_argument("--rows", type=int, default=128, help="Training rows of each tiny task in (a).")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs of each tiny task in (a).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in (a) (default 1: on a shared 2-core machine two threads make a tiny "
                             "model's step 3-30x slower and bimodal, which would drown the effect measured).")
    parser.add_argument("--skip-add", action="store_true", help="Only (b) and (c).")
    common.add_docs_options(parser)
    args = parser.parse_args(argv)
    n_th = args.nth or (5 if args.quick else 20)
    rounds = args.rounds or (3 if args.quick else 20)
    n_tasks = args.tasks or (100 if args.quick else 1000)
    runs = args.runs or (5 if args.quick else 15)
    info = common.machine()

    from registry.model.checkpoint import quiet_transformers

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        print(f"(b, c) {n_tasks:,} tasks × {args.metrics_per_task} metric rows vs 1 task; {runs} runs a command …",
              file=sys.stderr, flush=True)
        reads = bench_reads(work / "reads", n_tasks, args.metrics_per_task, runs)
        added = None
        if not args.skip_add:
            print(f"(a) add-task: task {n_th} vs task 1, {rounds} rounds …", file=sys.stderr, flush=True)
            import torch

            torch.set_num_threads(args.threads)
            added = bench_add(work / "add", n_th, rounds, args.rows, args.epochs)

    body = []
    verdicts = {}
    if added:
        t = added["times"]
        fill = ", ".join(f"{s:.2f}" for s in added["fill"])
        body.append(
            f"### (a) add-task: task {n_th} vs task 1 (tiny BERT)\n\n"
            f"Tiny random BERT (hidden 32, 2 layers), {args.rows} training rows, {args.epochs} epoch(s), "
            f"{args.threads} torch thread(s), library "
            f"`add_task` calls; {rounds} rounds, each adding the same new task to a copy of an empty registry "
            f"and to a copy of one holding {n_th - 1} tasks, in alternating order.\n\n"
            + common.markdown_table(
                ["side", f"add-task seconds (median, min–max, {rounds} runs)"],
                [
                    ["task 1", common.spread(t["first"])],
                    [f"task {n_th}", common.spread(t["nth"])],
                    [f"**task {n_th} / task 1**", f"**{added['ratio']:.3f}**"],
                ],
            )
            + f"\n\nGoal ≤ {GOALS['add']:g}: **{common.verdict(added['ratio'], GOALS['add'])}**. "
            f"Seconds of tasks 1–{n_th - 1} while filling (task 1 after a warm-up task elsewhere): {fill}."
        )
        verdicts["add"] = added["ratio"]
    t, sizes, (one, many) = reads["times"], reads["sizes"], reads["labels"]
    rows = []
    for command in ("list --json", "history NAME --json", "history --json"):
        ratio = common.median(t[(command, many)]) / common.median(t[(command, one)])
        goal = "" if command == "history --json" else common.verdict(ratio, GOALS["read"])
        rows.append(
            [
                f"`registry {command}`",
                common.spread(t[(command, one)]),
                common.spread(t[(command, many)]),
                f"{sizes[(command, one)]:,} → {sizes[(command, many)]:,}",
                f"**{ratio:.3f}**",
                goal or "(output grows 1,000×; see below)",
            ]
        )
        verdicts[command] = ratio
    body.append(
        f"### (b) list and history: {many} × {args.metrics_per_task} metric rows vs {one}\n\n"
        f"The real CLI in subprocesses (output to /dev/null), SQLite, the database filled by bulk inserts of "
        f"ready tasks with a succeeded run, 5 evaluations and {args.metrics_per_task} metric rows each; "
        f"`history NAME` asks for a task in the middle. {runs} runs of every command, all interleaved, "
        f"after 2 warm-up runs each.\n\n"
        + common.markdown_table(["command", one, many, "stdout bytes", "ratio", f"goal ≤ {GOALS['read']:g}"], rows)
    )
    startup = common.median(t[("list", "1 task")]) / common.median(t[("python -c 'import sqlalchemy, click'", "")])
    verdicts["startup"] = startup
    body.append("### (c) `registry list` vs importing its two main dependencies\n\n"
                + common.markdown_table(["command", f"wall time (median, min–max, {runs} runs)"],
                                        [["`registry list` (1 task)", common.spread(t[("list", "1 task")])],
                                         ["`python -c \"import sqlalchemy, click\"`",
                                          common.spread(t[("python -c 'import sqlalchemy, click'", "")])],
                                         ["**ratio**", f"**{startup:.3f}**"]])
                + f"\n\nGoal ≤ {GOALS['startup']:g}: **{common.verdict(startup, GOALS['startup'])}**.")
    common.publish(HEADING, "\n\n".join(body) + "\n" + NOTES, info=info, write=common.write_docs(args))
    return {"verdicts": verdicts, "reads": reads, "add": added}


NOTES = """
Reading the figures. (a) add-task does no work per earlier task: it checks the name (unique index), sweeps
`running` runs, and takes max(position); the time is training the tiny model plus fixed costs (loading the
base and the data, SQL writes), so task 20 and task 1 differ only by noise.
(b) `list` and `history NAME` read what they print (1,000 small rows, or one task's rows through the
(task_id, id) index); the startup of the CLI dominates both. `history` without a name prints every row:
100,000 rows and 1,000× the bytes of the one-task registry, so it grows with its output. Per row it
builds one dict from a Core row (no ORM object) and one line of JSON (json's C encoder: `--json` prints a
list as one compact row per line, since `indent` would switch to the pure-Python encoder).
(c) The read commands query registry.storage.schema's Core tables, so they import neither the ORM, Alembic,
fsspec nor torch (tests/test_cli_core.py checks it); beyond `import sqlalchemy, click` they load the CLI's
own modules, the SQLite dialect (`create_engine`), then check the schema revision and run two queries.
"""


if __name__ == "__main__":
    main()
