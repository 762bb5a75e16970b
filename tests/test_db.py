"""Migrations on both dialects: up from empty, down again, and no drift between registry.schema and migrations."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry import db
from registry.errors import NotARegistry, NotInitialised, SchemaMismatch
from registry.schema import metadata
from tests.helpers import REPO


def test_single_head_is_the_revision_the_code_expects():
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(db.alembic_config("sqlite://")).get_heads()
    assert heads == [db.SCHEMA_REVISION]  # the schema check reads the constant, not Alembic


def test_upgrade_then_downgrade(settings):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url)
    engine = db.make_engine(settings.db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"artifacts", "bases", "tasks", "runs", "metrics", "evaluations", "alembic_version"} <= tables
    db.check_schema(engine)

    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_schema_matches_migrations(settings):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url)
    engine = db.make_engine(settings.db_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []


def test_empty_database_is_not_initialised(settings):
    settings.home.mkdir(parents=True)
    engine = db.make_engine(settings.db_url)
    with pytest.raises(NotInitialised, match=r"run `registry init --base"):
        db.check_schema(engine)
    engine.dispose()


def test_older_and_newer_revisions_are_refused(settings):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url)
    engine = db.make_engine(settings.db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
    with pytest.raises(SchemaMismatch, match=r"^registry schema is at ffff9999, newer than this code \(0001\): upgrade adapter-registry$"):
        db.check_schema(engine)
    engine.dispose()


def test_non_registry_sqlite_file(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    engine = db.make_engine(f"sqlite:///{junk}")
    with pytest.raises(NotARegistry, match="is not a registry database"):
        db.check_schema(engine)
    engine.dispose()


def test_plain_alembic_uses_registry_home(tmp_path):
    """`alembic -c alembic.ini upgrade head` from the repo root migrates the DB that REGISTRY_HOME names."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"REGISTRY_HOME": str(home), "PATH": "/usr/bin:/bin"}
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "head"], check=True, env=env, cwd=REPO, capture_output=True)
    current = subprocess.run([*alembic, "current"], check=True, env=env, cwd=REPO, capture_output=True, text=True)
    assert "0001 (head)" in current.stdout
    assert (home / "registry.db").exists()
