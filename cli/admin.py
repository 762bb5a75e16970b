"""Maintenance commands: `verify` and `runs`. They import neither torch nor transformers."""

from __future__ import annotations

import sys

import click

from registry.cli.output import emit, json_option, open_registry, table
from registry.storage.config import Settings

RUN_COLUMNS = ("run", "task", "status", "from", "score", "device", "started_at", "finished_at", "error")


@click.command()
@click.option("--prune", is_flag=True, help="Remove store files no artifact row names (after sweeping dead runs).")
@json_option
@click.pass_obj
def verify(settings: Settings, prune: bool, as_json: bool) -> None:
    """Check every artifact's sha256, every ready task's artifacts and positions, and the store for stray files.

    Prints one line per problem and exits 1 if there is any; exits 0 when the registry is consistent.

    Example: registry verify --prune
    """
    report = open_registry(settings).verify(prune=prune)
    emit(report, as_json, print_report)
    if not report.ok:
        sys.exit(1)


def print_report(report: dict) -> None:
    """Removed files, then problems, one per line; or a one-line summary when all is well."""
    for path in report["pruned"]:
        click.echo(f"removed unreferenced file {path}")
    for path in report["discarded"]:
        click.echo(f"removed corrupt cache entry {path}")
    for problem in report["problems"]:
        click.echo(problem["message"])
    if report["ok"]:
        checked = report["checked"]
        click.echo(f"ok: {checked['artifacts']} artifacts and {checked['tasks']} ready tasks verified, "
                   f"no unreferenced files in the store")


@click.command()
@click.argument("name", required=False)
@click.option("--sweep", is_flag=True, help="First mark runs whose process died (or went silent) as interrupted.")
@json_option
@click.pass_obj
def runs(settings: Settings, name: str | None, sweep: bool, as_json: bool) -> None:
    """List training runs (of one task, or all): status, score, device, times and errors.

    Example: registry runs cola --sweep
    """
    registry = open_registry(settings)
    if sweep:
        swept = registry.sweep_runs()
        click.echo(f"marked {swept} run{'' if swept == 1 else 's'} interrupted", err=True)
    emit(registry.runs(name), as_json, lambda rows: table(rows, RUN_COLUMNS, empty="(no runs)"))


COMMANDS = [verify, runs]
