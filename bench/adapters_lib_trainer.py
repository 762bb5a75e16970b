"""The baseline of bench.adapters_lib, written the usual way: the `adapters` library + the Hugging Face Trainer.

Runs in its own virtualenv (bench/.venv-adapters, made by bench.adapters_lib), because `adapters` pins
its own transformers. It imports nothing from this repository. Recipe: Houlsby's double bottleneck
(`DoubleSeqBnConfig`, reduction factor hidden/m), a classification head, every example padded to
--max-length, Trainer with linear warm-up over 10% of the steps then linear decay, evaluated every epoch.
Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()


def read_cola(path: Path) -> tuple[list[str], list[int]]:
    """CoLA's TSV has no header: label in column 1, sentence in column 3."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[3] for row in rows], [int(row[1]) for row in rows]


class Encoded:
    """A list-of-dicts dataset the Trainer's default collator turns into tensors."""

    def __init__(self, tokenizer, texts: list[str], labels: list[int], max_length: int):
        self.features = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**{key: values[i] for key, values in self.features.items()}, "labels": self.labels[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--data", required=True, help="GLUE CoLA directory (train.tsv, dev.tsv).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--adapter-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    from adapters import AutoAdapterModel, DoubleSeqBnConfig
    from sklearn.metrics import matthews_corrcoef
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    imported = time.perf_counter()

    # --- data: every example padded to max_length ---
    train_texts, train_labels = read_cola(Path(args.data) / "train.tsv")
    dev_texts, dev_labels = read_cola(Path(args.data) / "dev.tsv")
    if args.max_train_samples and args.max_train_samples < len(train_labels):
        keep = sorted(random.Random(args.seed).sample(range(len(train_labels)), args.max_train_samples))
        train_texts, train_labels = [train_texts[i] for i in keep], [train_labels[i] for i in keep]
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    train_set = Encoded(tokenizer, train_texts, train_labels, args.max_length)
    dev_set = Encoded(tokenizer, dev_texts, dev_labels, args.max_length)
    tokenized = time.perf_counter()

    # --- model: frozen base, Houlsby double bottleneck, classification head ---
    torch.manual_seed(args.seed)
    model = AutoAdapterModel.from_pretrained(args.base)
    hidden = model.config.hidden_size
    model.add_adapter("cola", config=DoubleSeqBnConfig(reduction_factor=hidden / args.adapter_size))
    model.add_classification_head("cola", num_labels=2)
    model.train_adapter("cola")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def compute_metrics(prediction) -> dict:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"mcc": float(matthews_corrcoef(prediction.label_ids, np.argmax(logits, axis=-1)))}

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size * 2, num_train_epochs=args.epochs, warmup_ratio=0.1,
            lr_scheduler_type="linear", weight_decay=0.0, eval_strategy="epoch", save_strategy="no",
            logging_strategy="epoch", report_to="none", use_cpu=True, seed=args.seed, disable_tqdm=True,
            dataloader_num_workers=0, label_names=["labels"], remove_unused_columns=False)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=dev_set,
                          compute_metrics=compute_metrics)
        model_ready = time.perf_counter()
        trainer.train()
    finished = time.perf_counter()

    per_epoch = [entry["eval_mcc"] for entry in trainer.state.log_history if "eval_mcc" in entry]
    print(json.dumps({
        "mcc_per_epoch": per_epoch, "best_mcc": max(per_epoch), "final_mcc": per_epoch[-1],
        "best_epoch": per_epoch.index(max(per_epoch)) + 1, "trainable_params": trainable,
        "phases_s": {"import": imported - STARTED, "tokenize": tokenized - imported, "model": model_ready - tokenized,
                    "train_and_eval": finished - model_ready, "total_in_process": finished - STARTED},
        "versions": {"adapters": __import__("adapters").__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "python": sys.version.split()[0]},
    }))


if __name__ == "__main__":
    main()
