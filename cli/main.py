"""The `registry` command: a click group whose commands each call one library function."""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import NoReturn

import click

from registry.cli import admin, bundle, lifecycle, read, serve, setup, train
from registry.cli import ui
from registry.cli.output import show_notices
from registry.storage.config import resolve
from registry.errors import RegistryError, printable


class RegistryGroup(click.Group):
    """Turns library errors into one line on stderr and exit 1; --debug shows the traceback."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a bad --home, --db or --store: one line as well
            usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a command's bad option or argument: one line too, naming its --help
            usage_error(exc)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader closed our stdout (`| head -1`): normal use, the work is done
            quiet_stdout()
            sys.exit(0)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            message = str(exc) if isinstance(exc, RegistryError) else environment_problem(exc) or (
                f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            click.echo(f"Error: {printable(' '.join(message.split()))}", err=True)
            sys.exit(1)


def usage_error(exc: click.UsageError) -> NoReturn:
    """A bad option or argument as one line naming the command's --help; exit 2."""
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    click.echo(f"Error: {printable(' '.join(exc.format_message().split()))}{where}", err=True)
    sys.exit(exc.exit_code)


# What the machine said, and what to do: these are the environment's answers, not the registry's bugs.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
BAD_PATH = (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP)  # a path given that cannot be one
SQLITE_SAYS = {"database or disk is full": "the disk is full: free some space, then run the command again",
               "attempt to write a readonly database": "the database file or its directory is read-only: "
                                                       "make it writable or give another --home"}


def environment_problem(error: Exception) -> str | None:
    """One line for a full disk or a read-only place (an OSError, or SQLite saying so); None for anything else."""
    if isinstance(error, OSError) and error.errno in DISK_FULL + NOT_WRITABLE:
        where = f" {error.filename}" if error.filename else ""
        what = "free some space" if error.errno in DISK_FULL else "give a place you can write to"
        return f"cannot write{where}: {error.strerror}: {what}, then run the command again"
    if isinstance(error, OSError) and error.errno in BAD_PATH and error.filename:
        return f"cannot use {error.filename}: {error.strerror}: check --home, --store and the paths given"
    said = str(getattr(error, "orig", "") or "").lower()
    return next((message for text, message in SQLITE_SAYS.items() if text in said), None)


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no real file descriptor (tests capture stdout)
        pass


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", envvar="REGISTRY_HOME", type=click.Path(file_okay=False), help="Registry directory (default ./.registry)."
)
@click.option("--db", envvar="REGISTRY_DB_URL", help="SQLite or PostgreSQL URL (default: SQLite in --home).")
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
    try:
        cli(prog_name="registry")
    finally:  # output still buffered for a reader that has gone (`| head -1`) is dropped quietly
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            quiet_stdout()
