"""Commands that need torch: `add-task` and `eval`. The library is imported only when they run."""

from __future__ import annotations

import click

from registry.cli.output import (device_option, emit, fields, json_option, open_registry, quiet_notices,
                                 usage_errors)
from registry.storage.config import Settings
from registry.options import TrainConfig, parse_init_from

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or inferred-settings lines.")


@click.command(name="add-task")
@click.argument("name")
@click.option("--data", "source", required=True,
              help="A directory (train + dev/validation files), one file, or a hub dataset as hf:REPO_ID[:CONFIG], "
                   "e.g. hf:nyu-mll/glue:cola.")
@click.option(
    "--text-column", "text_columns", multiple=True, help="Text column (repeat for a pair). Default: inferred."
)
@click.option("--label-column", help="Label column. Default: inferred.")
@click.option(
    "--task-type", type=click.Choice(["classification", "regression"]), help="Default: inferred from the labels."
)
@click.option(
    "--metric", type=click.Choice(["accuracy", "f1", "mcc", "spearman", "pearson"]), help="Default: inferred (GLUE's)."
)
@click.option("--epochs", type=click.IntRange(min=1, max=10_000), default=3, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Peak learning rate (Adam).",
)
@click.option("--batch-size", type=click.IntRange(min=1, max=2**20), default=32, show_default=True)
@click.option("--adapter-size", type=click.IntRange(min=1), default=64, show_default=True, help="Bottleneck size m.")
@click.option(
    "--max-length", type=click.IntRange(min=8), default=128, show_default=True, help="Tokens per example (truncated)."
)
@click.option("--max-train-samples", type=click.IntRange(min=1, max=2**31 - 1), help="Train on a seeded random subset.")
@click.option("--strict", is_flag=True,
              help="Refuse data with rows that cannot train (empty text, no label) instead of skipping them.")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@click.option(
    "--sweep", is_flag=True, help="Grid over learning rate × adapter size; every run recorded, the best published."
)
@click.option("--new-version", is_flag=True,
              help="Train the next version of an existing task (same task type and labels).")
@click.option("--promote", is_flag=True, help="With --new-version: make it current whatever it scores.")
@click.option("--init-from", default="none", show_default=True, metavar="auto|none|TASK",
              help="Start the adapters and LayerNorms from an earlier task's (the head is new): TASK, or auto: "
                   "every earlier task ranked by its text similarity to this data, a trial of the --shortlist best "
                   "and of none (the new head fitted on each start's features), and none unless the best trial "
                   "beats it beyond the trial's noise. Earlier tasks are only read.")
@click.option("--shortlist", type=click.IntRange(min=1),
              help="With --init-from auto: how many of the best-ranked earlier tasks get a trial (default 3).")
@click.option("--compare-scratch", is_flag=True,
              help="With --init-from: also train from scratch (same data, seed, epochs); the better run is "
                   "published and `history --matrix` shows the forward transfer (FWT).")
@click.option("--base-dropout/--no-base-dropout", default=False, show_default=True,
              help="Keep the frozen base's dropout while training (the paper's recipe). Off by default: a step "
                   "takes 0.56 of a full fine-tuning step instead of 0.73, at the same scores (docs/benchmarks.md).")
@device_option
@quiet_option
@json_option
@click.pass_obj
def add_task(settings: Settings, name: str, source: str, text_columns: tuple[str, ...], label_column: str | None,
             task_type: str | None, metric: str | None, epochs: int, lr: float, batch_size: int, adapter_size: int,
             max_length: int, max_train_samples: int | None, strict: bool, seed: int, sweep: bool, new_version: bool,
             promote: bool, init_from: str, shortlist: int | None, compare_scratch: bool, base_dropout: bool,
             device: str, quiet: bool, as_json: bool) -> None:
    """Train an adapter for a new task on the frozen base and add it as the next task, or train a task's next version.

    A new version becomes current when it scores at least as well as the current one on its validation
    data (both are printed), or with --promote; otherwise it is kept as a candidate (`registry promote`).

    Example: registry add-task cola --data ../shared/data/glue/CoLA --epochs 3

    Example: registry add-task mrpc --data ../shared/data/glue/MRPC --init-from auto
    """
    if quiet:
        quiet_notices(click.get_current_context())
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, adapter_size=adapter_size,
                         max_length=max_length, seed=seed, base_dropout=base_dropout)
    with usage_errors():
        start = parse_init_from(init_from, shortlist)
        result = open_registry(settings).add_task(
            name, source, config=config, init_from=start, new_version=new_version,
            promote=promote, compare_scratch=compare_scratch, sweep=sweep, text_columns=text_columns,
            label_column=label_column, task_type=task_type, metric=metric, max_train_samples=max_train_samples,
            strict=strict, device=device, progress=False if quiet else None)
    emit(result, as_json, fields)


@click.command(name="eval")
@click.argument("name")
@click.option("--data", "source", help="Validation data (default: the data the task was trained on).")
@device_option
@quiet_option
@json_option
@click.pass_obj
def eval_(settings: Settings, name: str, source: str | None, device: str, quiet: bool, as_json: bool) -> None:
    """Re-evaluate a stored task and record the score, with how many tasks the registry holds now.

    Example: registry eval cola
    """
    if quiet:
        quiet_notices(click.get_current_context())
    result = open_registry(settings).evaluate(name, source, device=device, progress=False if quiet else None)
    emit(
        result,
        as_json,
        lambda r: click.echo(
            f"{r['task']}: {r['metric']} = {r['score']:.4f} ({r['tasks_present']} tasks in the registry)"
        ),
    )


COMMANDS = [add_task, eval_]
