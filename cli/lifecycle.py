"""`registry promote`, `retire` and `restore`: which version of a task is served, and whether it is. No torch.

registry.lifecycle (the ORM) is imported when they run, so that the read commands never import it.
"""

from __future__ import annotations

import click

from registry.cli.output import emit, fields, json_option
from registry.storage.config import Settings
from registry.storage.core import open_registry


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
    from registry.catalog import lifecycle

    emit(lifecycle.promote(open_registry(settings), name, version, why), as_json, fields)


def visibility_command(action: str, help_text: str) -> click.Command:
    """`registry retire` or `registry restore`: one task's visibility, changed by catalog.lifecycle's `action`."""

    @click.command(name=action, help=help_text)
    @click.argument("name")
    @click.option("--why", help="Why, recorded with who and when in the task's events (`registry show`).")
    @json_option
    @click.pass_obj
    def command(settings: Settings, name: str, why: str | None, as_json: bool) -> None:
        from registry.catalog import lifecycle

        emit(getattr(lifecycle, action)(open_registry(settings), name, why), as_json, fields)

    return command


retire = visibility_command("retire", """Hide a task from list, export, predict and serve.

    Its versions and history stay; `registry restore` undoes it.

    Example: registry retire cola --why "superseded by cola-large"
    """)
restore = visibility_command("restore", """Bring back a retired task: listed, exported and served again.

    Example: registry restore cola
    """)

COMMANDS = [promote, retire, restore]
