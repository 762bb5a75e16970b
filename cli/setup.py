"""`registry init` and `registry db …`."""

from __future__ import annotations

import click

from registry.api import Registry
from registry.cli.output import emit, fields, json_option
from registry.storage.config import Settings


@click.command()
@click.option("--base", "source", required=True, help="A checkpoint directory or hub id (BERT, RoBERTa, DistilBERT …).")
@click.option("--name", help="A name for the base (default: last part of --base).")
@json_option
@click.pass_obj
def init(settings: Settings, source: str, name: str | None, as_json: bool) -> None:
    """Create a registry and register its frozen base checkpoint.

    Example: registry init --base sentence-transformers/all-MiniLM-L6-v2
    """
    with Registry.create(settings.home, base=source, name=name, db=settings.db_url, store=settings.store_url) as r:
        emit(r.base(), as_json, fields)


@click.group()
def db() -> None:
    """Inspect or migrate the registry database schema.

    Example: registry db upgrade
    """


@db.command()
@click.pass_obj
def current(settings: Settings) -> None:
    """Print the schema revision of the database and the one this code expects.

    Example: registry db current
    """
    revision = Registry.schema_revision(settings.home, db=settings.db_url)
    click.echo(f"database: {revision.database or '(empty)'}\ncode:     {revision.code}")


@db.command()
@click.pass_obj
def upgrade(settings: Settings) -> None:
    """Migrate the registry database to the schema this code expects.

    Example: registry db upgrade
    """
    click.echo(f"database at {Registry.upgrade(settings.home, db=settings.db_url).database}")


COMMANDS = [init, db]
