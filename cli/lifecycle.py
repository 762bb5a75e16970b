"""`registry promote`, `retire` and `restore`: which version of a task is served, and whether it is. No torch."""

from __future__ import annotations

import click

from registry.cli.output import emit, fields, json_option, open_registry
from registry.storage.config import Settings


@click.command()
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), required=True, help="The version to make current.")
@click.option("--why", help="Why, recorded with who and when (default: which version it replaces).")
@json_option
@click.pass_obj
def promote(settings: Settings, name: str, version: int, why: str | None, as_json: bool) -> None:
    """Make a version of a task its current one (a candidate, or an older version to roll back to).

    `list`, `export`, `predict` and `serve` use the current version. Who, when and why are recorded.

    Example: registry promote cola --version 1 --why "v2 mislabels questions"
    """
    emit(open_registry(settings).promote(name, version, why), as_json, fields)


def visibility_command(action: str, help_text: str) -> click.Command:
    """`registry retire` or `registry restore`: one task's visibility, changed by Registry's method `action`."""

    @click.command(name=action, help=help_text)
    @click.argument("name")
    @click.option("--why", help="Why, recorded with who and when in the task's events (`registry show`).")
    @json_option
    @click.pass_obj
    def command(settings: Settings, name: str, why: str | None, as_json: bool) -> None:
        emit(getattr(open_registry(settings), action)(name, why), as_json, fields)

    return command


retire = visibility_command("retire", """Hide a task from list, export, predict and serve.

    Its versions and history stay; `registry restore` undoes it.

    Example: registry retire cola --why "superseded by cola-large"
    """)
restore = visibility_command("restore", """Bring back a retired task: listed, exported and served again.

    Example: registry restore cola
    """)

COMMANDS = [promote, retire, restore]
