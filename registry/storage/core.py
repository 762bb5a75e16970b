"""An opened registry: its settings, database engine and artifact store, opened after checking the schema.

`Opened` is what the library's rooms pass around; the public face, `registry.api.Registry`, wraps one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Row, select

from registry.storage import db, schema
from registry.storage.config import Settings
from registry.errors import NotInitialised

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass
class Opened:
    """An opened registry's settings, engine and store. Use `read()` / `write()` for transactions."""

    settings: Settings
    engine: Engine

    @cached_property
    def store(self):
        """The artifact store, opened on first use (read commands that only query never import fsspec)."""
        from registry.storage.store import Store

        return Store(self.settings.store_url)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction with an ORM session."""
        with db.transaction(self.engine) as session:
            yield session

    @contextmanager
    def query(self) -> Iterator[Connection]:
        """A read transaction with a Core connection: what the read commands use (no ORM import)."""
        with db.reading(self.engine) as connection:
            yield connection

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (on SQLite it holds the write lock from its first statement)."""
        with db.transaction(self.engine, write=True) as session:
            yield session

    def base(self, connection: Connection | Session) -> Row:
        """The registry's frozen base checkpoint: a row of `bases`, read in a session or a connection."""
        base = connection.execute(select(schema.bases)).first()
        if base is None:
            raise NotInitialised(
                f"the registry at {db.describe(self.engine)} has no base: run `registry init --base PATH_OR_HUB_ID`"
            )
        return base

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def database_exists(settings: Settings) -> bool:
    """False only for a SQLite file that is not there (checked without creating it)."""
    path = db.sqlite_path(settings.db_url)
    return path is None or path.exists()


def open_registry(settings: Settings) -> Opened:
    """Open an initialised registry at the current schema revision; nothing is created or changed."""
    if not database_exists(settings):
        raise NotInitialised(f"no registry at {settings.home}: run `registry init --base PATH_OR_HUB_ID` first")
    engine = db.make_engine(settings.db_url)
    try:
        db.check_schema(engine)
    except Exception:
        engine.dispose()
        raise
    return Opened(settings=settings, engine=engine)
