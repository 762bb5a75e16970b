"""Read commands: `list`, `show`, `history`. They import neither torch nor transformers."""

from __future__ import annotations

import click

from registry.results import plain

from registry.cli.output import emit, fields, fmt, json_option, open_registry, table
from registry.storage.config import Settings

LIST_COLUMNS = ("position", "name", "version", "task_type", "metric", "score", "trainable_params", "status",
                "created_at")
HISTORY_COLUMNS = ("task", "version", "run", "evaluation", "tasks_present", "split", "epoch", "metric", "value",
                   "recorded_at")
VERSION_COLUMNS = ("version", "current", "score", "run", "created_at", "why")
EVENT_COLUMNS = ("at", "action", "version", "by", "why")


@click.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Also list retired tasks.")
@json_option
@click.pass_obj
def list_(settings: Settings, show_all: bool, as_json: bool) -> None:
    """List tasks in order with their current version, metric, score and trainable parameters.

    Example: registry list --json
    """
    columns = (*LIST_COLUMNS, "retired_at") if show_all else LIST_COLUMNS
    emit(open_registry(settings).tasks(include_retired=show_all), as_json,
         lambda rows: table(rows, columns, empty="(no tasks yet: registry add-task NAME --data PATH)"))


@click.command()
@click.argument("name")
@json_option
@click.pass_obj
def show(settings: Settings, name: str, as_json: bool) -> None:
    """Show one task: columns, label map, artifacts, its versions, who moved its current version when and why, runs.

    Example: registry show cola
    """
    emit(open_registry(settings).task(name), as_json, print_task)


def print_task(row: dict) -> None:
    """A task's fields, then its versions, its events and its runs as tables."""
    fields(row)
    click.echo("")
    versions = [{**version, "current": "current" if version["current"] else "candidate"} for version in row["versions"]]
    table(versions, VERSION_COLUMNS, empty="(no versions)")
    click.echo("")
    table(row["events"], EVENT_COLUMNS, empty="(no events)")
    click.echo("")
    runs = [{**run, "from": f"{run['init_from']['task']} v{run['init_from']['version']}" if run["init_from"]
             else "scratch"} for run in row["runs"]]
    table(runs, ("run", "status", "from", "score", "best_epoch", "device", "started_at", "finished_at", "error"))


@click.command()
@click.argument("name", required=False)
@click.option(
    "--matrix", is_flag=True,
    help="Show R[i][j], task j's score after adding task i, with ACC, BWT and FWT (GEM); FWT needs scratch runs "
         "(add-task --compare-scratch)."
)
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), help="Also draw the history to this PNG file.")
@json_option
@click.pass_obj
def history(settings: Settings, name: str | None, matrix: bool, plot: str | None, as_json: bool) -> None:
    """Every score ever recorded, oldest first: per-epoch training metrics and later re-evaluations.

    Example: registry history cola
    """
    registry = open_registry(settings)
    if matrix:
        emit(registry.matrix(), as_json, print_matrix)
        return
    rows = registry.history(name)
    if plot:
        from registry.catalog.report import plot_history

        metrics = {task.name: task.metric for task in registry.tasks(include_retired=True)}
        plot_history(plain(rows), metrics, plot)
        click.echo(f"wrote {plot}", err=True)
    emit(rows, as_json, lambda r: table(r, HISTORY_COLUMNS))


def print_matrix(result: dict) -> None:
    """R as a lower-triangular table, a row of each task's FWT, then ACC, BWT and the mean FWT."""
    rows = [{"after adding": name, **{task: score for task, score in zip(result["tasks"], scores)}}
            for name, scores in zip(result["tasks"], result["matrix"])]
    if any(value is not None for value in result["fwt"]):
        rows.append({"after adding": "FWT", **dict(zip(result["tasks"], result["fwt"]))})
    table(rows, ["after adding", *result["tasks"]])
    click.echo(f"ACC {fmt(result['acc'])}   BWT {fmt(result['bwt'])}   FWT {fmt(result['fwt_mean'])}")


COMMANDS = [list_, show, history]
