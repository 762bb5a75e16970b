"""Starting a registry, all or nothing: what `init` and `import` share.

`new_database(settings)` creates a registry's database (schema at head). `rolled_back(settings)` wraps the
block that starts a registry at a location: when the block fails, every database file, table, row and store file
it added is removed again, and a home it created goes too. Another process that started the registry there
meanwhile (AlreadyInitialised) owns what is there: it is left alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from registry.errors import AlreadyInitialised
from registry.storage import db, ownership, schema
from registry.storage.config import Settings
from registry.storage.core import Opened
from registry.storage.store import Store


@contextmanager
def rolled_back(settings: Settings, registry_id: str | None = None) -> Iterator[None]:
    """Run the block that starts a registry at `settings`; if it fails, put the location back as it was (the
    store's marker too, when it names `registry_id`: the one this block claimed the store with)."""
    before = Before.of(settings)
    try:
        yield
    except AlreadyInitialised:  # another init or import started the registry meanwhile: it is theirs, leave it
        raise
    except BaseException:
        before.restore(settings, registry_id)
        raise


@contextmanager
def new_database(settings: Settings) -> Iterator[Opened]:
    """The registry at `settings` for the block, its database created (schema at head) when it has none yet."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.db_url)
    try:
        if db.current_revision(engine) is None:
            db.upgrade(settings.db_url)
            db.enable_wal(engine)
        db.check_schema(engine)
        yield Opened(settings=settings, engine=engine)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Before:
    """What a registry location held before `init` or `import` started a registry there, to put it back if they fail."""

    home: bool
    database: bool  # the SQLite file existed
    tables: bool  # the database held the registry's tables
    store: frozenset[str]

    @classmethod
    def of(cls, settings: Settings) -> Before:
        path = db.sqlite_path(settings.db_url)
        return cls(home=settings.home.exists(), database=path is None or path.exists(),
                   tables=db.revision_at(settings.db_url) is not None, store=frozenset(Store(settings.store_url).all()))

    def restore(self, settings: Settings, registry_id: str | None = None) -> None:
        """Remove the database, tables, rows and store files added since (a registry without a base has no tasks),
        and the store's marker when it names `registry_id`."""
        path = db.sqlite_path(settings.db_url)
        if not self.database:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            engine = db.make_engine(settings.db_url)
            try:
                with engine.begin() as connection:
                    if self.tables:  # a registry without a base holds no rows that name it
                        connection.execute(schema.bases.delete())
                        connection.execute(schema.artifacts.delete())
                    else:
                        schema.metadata.drop_all(connection)
                        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            finally:
                engine.dispose()
        store = Store(settings.store_url)
        for sha in set(store.all()) - self.store:
            store.delete(sha)
        if registry_id is not None:
            ownership.remove_marker(store, registry_id)
        if not self.home:
            shutil.rmtree(settings.home, ignore_errors=True)
