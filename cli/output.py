"""Options shared by many commands, and printing: aligned tables for people, --json for programs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from registry.errors import printable

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="Where to run the model: CUDA when present with auto.")


def regular_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option's path, refused unless it is a regular file (a device or FIFO would be read forever, or block)."""
    if value is not None and not Path(value).is_file():
        raise click.BadParameter(f"{value} is not a regular file: pass a file", ctx=ctx, param=param)
    return value


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON or with `render`."""
    if as_json:
        click.echo(to_json(data))
    else:
        render(data)


def to_json(data: Any) -> str:
    """A list as one compact JSON row per line; anything else indented.

    Rows are encoded by json's C encoder, which `indent` would turn off: the full history of a large
    registry is 100,000s of rows.
    """
    if isinstance(data, list):
        return "[" + ",\n ".join(json.dumps(row, default=str) for row in data) + "]"
    return json.dumps(data, indent=2, default=str)


def fmt(value: Any) -> str:
    """A cell: floats to 4 places, None blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(str(value))  # names, labels and sources may come from an imported bundle


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "(none)") -> None:
    """Print `rows` as an aligned table of `columns`."""
    if not rows:
        click.echo(empty)
        return
    cells = [[fmt(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip())
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def fields(row: dict[str, Any]) -> None:
    """Print one record as `key: value` lines."""
    width = max(len(key) for key in row)
    for key, value in row.items():
        if not isinstance(value, (list, dict)) or key in ("text_columns", "labels"):
            click.echo(f"{key.ljust(width)}  {fmt(value)}")
