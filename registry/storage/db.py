"""Engine, transactions and the schema-revision check against migrations/."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from registry.errors import DatabaseUnavailable, NotARegistry, NotInitialised, SchemaMismatch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Found, not imported: migrations/env.py imports this module, so importing the package here would be a cycle.
MIGRATIONS_PACKAGE = "registry.migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000
DIALECTS = ("sqlite", "postgresql")
SCHEMA_REVISION = "0005"  # the head of migrations/versions (tests/test_db.py keeps the two equal)


def parse_url(url: str) -> URL:
    """`url` parsed, refused with what to give when it is not a database URL this registry can use."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseUnavailable(f"--db {url!r} is not a database URL: give sqlite:///PATH or "
                                  "postgresql://USER@HOST/DB") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseUnavailable(f"--db {url}: an in-memory database vanishes when the command ends: "
                                  "give sqlite:///PATH")
    if parsed.get_backend_name() not in DIALECTS:
        raise DatabaseUnavailable(f"--db {parsed.render_as_string(hide_password=True)}: the registry runs on "
                                  f"{' and '.join(DIALECTS)} only: give sqlite:///PATH or postgresql://USER@HOST/DB")
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, None for other dialects or in-memory databases."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def application_name(pid: int | None = None) -> str:
    """How a registry process's PostgreSQL sessions are named (pg_stat_activity.application_name)."""
    return f"registry[{os.getpid() if pid is None else pid}]"


def make_engine(url: str) -> Engine:
    """An engine; on SQLite with foreign keys enforced, a busy timeout and explicit BEGIN IMMEDIATE for writes."""
    if sqlite_path(url) is None:
        try:  # the process is named in pg_stat_activity, unless the URL names it otherwise
            named = {} if "application_name" in parse_url(url).query else {"application_name": application_name()}
            return create_engine(url, pool_pre_ping=True, connect_args=named)
        except (ArgumentError, ImportError) as exc:  # an unknown driver (postgresql+nope), or one not installed
            raise DatabaseUnavailable(f"cannot use --db {parse_url(url).render_as_string(hide_password=True)} "
                                      f"({first_line(exc)}): install its driver or give postgresql://…") from None
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # A writer takes the write lock up front, so two writers queue on the busy timeout
        # instead of failing with "database is locked" when a reader upgrades to a writer.
        write = connection.get_execution_options().get("registry_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def enable_wal(engine: Engine) -> None:
    """Switch a SQLite database to WAL (persistent in the file) so readers never block the writer.

    The switch needs the database to itself and SQLite does not wait for that: while another process
    (a second `init`) holds a lock, it is retried for up to the busy timeout.
    """
    if engine.dialect.name != "sqlite":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    connection = engine.raw_connection()  # outside any transaction, as SQLite requires
    try:
        while True:
            try:
                connection.cursor().execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        connection.close()


@contextmanager
def transaction(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """An ORM session in one transaction: committed on success, rolled back on any exception."""
    from sqlalchemy.orm import Session  # here, so that commands which only read never import the ORM

    bind = engine.execution_options(registry_write=True) if write else engine
    with Session(bind=bind, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A Core connection in one read transaction (registry.catalog.queries's queries)."""
    with engine.connect() as connection, connection.begin():
        yield connection


def migrations_dir() -> Path:
    """The folder of the Alembic migrations shipped with this package, located without importing it."""
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{MIGRATIONS_PACKAGE} is not installed"
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def alembic_config(url: str):
    """An Alembic config for the migrations shipped with this package, pointed at `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def known_revisions() -> set[str]:
    """Every revision in migrations/."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, None when it holds no registry schema at all.

    Read with plain SQL, so that commands which only read never import Alembic.
    """
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            revision = (
                connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if "alembic_version" in tables
                else None
            )
            if revision is None and tables - {"alembic_version"}:
                raise NotARegistry(
                    f"{describe(engine)} holds tables but no registry schema: "
                    "point --home or REGISTRY_DB_URL at a registry"
                )
            return revision
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot open database {describe(engine)}: {first_line(exc.orig)}; "
                                  f"{open_hint(engine, exc)}") from exc
    except DatabaseError as exc:
        raise NotARegistry(
            f"{describe(engine)} is not a registry database ({first_line(exc.orig)}): "
            "point --home or REGISTRY_DB_URL at a registry"
        ) from exc


def revision_at(url: str) -> str | None:
    """The revision of the database at `url`; None when empty or (SQLite) when the file is absent (not created)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def check_schema(engine: Engine) -> None:
    """Refuse a database whose schema is missing, older or newer than this code; never change it silently."""
    revision = current_revision(engine)
    head = SCHEMA_REVISION
    if revision is None:
        raise NotInitialised(f"no registry at {describe(engine)}: run `registry init --base PATH_OR_HUB_ID` first")
    if revision == head:
        return
    if revision in known_revisions():
        raise SchemaMismatch(f"registry schema is at {revision}, code expects {head}: run `registry db upgrade`")
    raise SchemaMismatch(f"registry schema is at {revision}, newer than this code ({head}): upgrade adapter-registry")


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def upgrade_registry(url: str) -> str:
    """`registry db upgrade`: migrate an existing registry to head; refuse empty, foreign or newer databases."""
    revision = revision_at(url)
    if revision is None:
        raise NotInitialised(
            f"no registry at {make_url(url).render_as_string(hide_password=True)}: "
            "run `registry init --base PATH_OR_HUB_ID` first"
        )
    if revision not in known_revisions():
        raise SchemaMismatch(
            f"registry schema is at {revision}, newer than this code ({head_revision()}): upgrade adapter-registry"
        )
    upgrade(url)
    return head_revision()


def open_hint(engine: Engine, error: OperationalError) -> str:
    """What to do when the database cannot be opened: a full disk, a read-only directory, or a wrong --db."""
    reason = str(error.orig).lower()
    if "full" in reason:
        return "the disk is full: free some space, then run the command again"
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None and ("readonly" in reason or "read-only" in reason or "unable to open" in reason):
        folder = path.parent
        if folder.is_dir() and os.statvfs(folder).f_bavail == 0:
            return f"the disk holding {folder} is full: free some space, then run the command again"
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} is not writable: give a --home you can write to"
        if path.exists() and not os.access(path, os.W_OK):
            return f"{path} is read-only: make it writable or give another --home"
    return "check --db / REGISTRY_DB_URL"


def describe(engine: Engine) -> str:
    """The database URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def first_line(error: BaseException | None) -> str:
    """The first line of an exception's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
