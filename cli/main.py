"""The `registry` command: a click group whose commands each call one library function."""

from __future__ import annotations

import sys

import click

from registry.cli import admin, bundle, lifecycle, read, serve, setup, train
from registry.cli import ui
from registry.cli.output import show_notices
from registry.storage.config import resolve
from registry.errors import RegistryError, printable


class RegistryGroup(click.Group):
    """Turns library errors into one line on stderr and exit 1; --debug shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a command's bad option or argument: one line too, naming its --help
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            click.echo(f"Error: {' '.join(exc.format_message().split())}{where}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            message = (
                str(exc)
                if isinstance(exc, RegistryError)
                else f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            )
            click.echo(f"Error: {printable(' '.join(message.split()))}", err=True)
            sys.exit(1)


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", envvar="REGISTRY_HOME", type=click.Path(file_okay=False), help="Registry directory (default ./.registry)."
)
@click.option("--db", envvar="REGISTRY_DB_URL", help="SQLAlchemy database URL (default: SQLite in --home).")
@click.option(
    "--store", envvar="REGISTRY_STORE", help="Artifact store: a directory or fsspec URL (default: --home/artifacts)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="adapter-registry")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db: str | None, store: str | None, debug: bool) -> None:
    """A continual-learning task registry: one frozen base, one adapter per task, every score in SQL.

    Example: registry init --base sentence-transformers/all-MiniLM-L6-v2
    """
    ctx.obj = resolve(home=home, db=db, store=store)
    show_notices(ctx)


for module in (setup, read, train, bundle, lifecycle, serve, admin, ui):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="registry")
