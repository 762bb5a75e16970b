"""Options shared by many commands, and printing: aligned tables for people, --json for programs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from registry.api import Registry
from registry.storage.config import Settings
from registry.errors import OptionError, printable
from registry.results import plain

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="Where to run the model: CUDA when present with auto.")


def regular_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option's path, refused unless it is a regular file (a device or FIFO would be read forever, or block)."""
    if value is not None and not Path(value).is_file():
        raise click.BadParameter(f"{value} is not a regular file: pass a file", ctx=ctx, param=param)
    return value


class EchoHandler(logging.Handler):
    """The library's `registry` log records on stderr, one line each (its notices, as the CLI always printed them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # a closed stderr must not fail the command
            self.handleError(record)


def show_notices(ctx: click.Context) -> None:
    """Until the command ends, print the library's INFO and WARNING records on stderr."""
    logger, handler = logging.getLogger("registry"), EchoHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    ctx.meta["registry.notices"] = handler

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    ctx.call_on_close(restore)


def quiet_notices(ctx: click.Context) -> None:
    """--quiet: only warnings (a cache entry discarded), no inferred settings or run scores."""
    ctx.find_root().meta["registry.notices"].setLevel(logging.WARNING)


def open_registry(settings: Settings) -> Registry:
    """The registry at the resolved --home/--db/--store."""
    return Registry.open(settings.home, db=settings.db_url, store=settings.store_url)


@contextmanager
def usage_errors() -> Iterator[None]:
    """The library's refusal of options that cannot go together, shown as click's usage error (exit 2)."""
    try:
        yield
    except OptionError as exc:
        raise click.UsageError(str(exc)) from None


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` (a result, as plain dicts and lists) as JSON or with `render`."""
    data = plain(data)
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
