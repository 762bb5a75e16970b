"""Migrations on both dialects: up from empty, down again, and no drift between registry.schema and migrations."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from registry.storage import db
from registry.errors import NotARegistry, NotInitialised, SchemaMismatch
from registry.storage.schema import metadata
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


def test_an_upgrade_is_one_transaction_so_a_failed_one_leaves_the_schema_where_it_was(settings, monkeypatch):
    """Every migration of one upgrade commits together, its version read inside (on SQLite too, where alembic's
    default is a transaction per migration): so two `init`s on a new database cannot interleave between two
    migrations, and an upgrade that fails at its last migration leaves the schema where it started."""
    from alembic.operations import Operations

    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url, "0003")
    execute = Operations.execute

    def failing(self, sql, *args, **kwargs):
        if "status = 'pending'" in str(sql):  # revision 0005's second step, after 0004 and 0005's first
            raise RuntimeError("injected")
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(Operations, "execute", failing)
    with pytest.raises(RuntimeError, match="injected"):
        db.upgrade(settings.db_url)
    assert db.revision_at(settings.db_url) == "0003"  # 0004 went back with 0005
    engine = db.make_engine(settings.db_url)
    assert "embedding_sha256" not in {c["name"] for c in inspect(engine).get_columns("task_versions")}
    engine.dispose()
    monkeypatch.setattr(Operations, "execute", execute)
    db.upgrade(settings.db_url)
    assert db.revision_at(settings.db_url) == db.SCHEMA_REVISION


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
    db.upgrade(settings.db_url, "0001")
    engine = db.make_engine(settings.db_url)
    older = r"^registry schema is at 0001, code expects 0005: run `registry db upgrade`$"
    with pytest.raises(SchemaMismatch, match=older):
        db.check_schema(engine)
    db.upgrade(settings.db_url)
    db.check_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
    newer = r"^registry schema is at ffff9999, newer than this code \(0005\): upgrade adapter-registry$"
    with pytest.raises(SchemaMismatch, match=newer):
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
    assert "0005 (head)" in current.stdout
    assert (home / "registry.db").exists()


# --- upgrades on registries holding data --------------------------------------------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
OLD_COLUMNS = {  # every table of revision 0001 and its columns, to compare rows across the upgrade and back
    "artifacts": "sha256, kind, size, created_at",
    "bases": "id, name, source, model_type, sha256, config_sha256, tokenizer_sha256, config, parameters, created_at",
    "tasks": "id, name, position, base_id, status, data_source, task_type, metric, text_columns, label_column, labels, "
             "adapter_size, adapter_sha256, config_sha256, score, trainable_params, created_at, ready_at",
    "runs": "id, task_id, status, hyperparams, seed, versions, device, host, pid, data_fingerprint, validation_from, "
            "trainable_params, score, best_epoch, adapter_sha256, error, started_at, heartbeat_at, finished_at",
    "evaluations": "id, task_id, adapter_sha256, tasks_present, data_fingerprint, score, created_at",
    "metrics": "id, task_id, run_id, evaluation_id, key, split, epoch, step, value, recorded_at",
}


def fill_0001(engine) -> None:
    """A registry at revision 0001 as its code left it, written with plain SQL: two ready tasks (one
    re-evaluated, one with a failed run before the published one), a failed task, runs, metrics, an evaluation."""
    names = ("base", "base-config", "tokenizer", "a1", "c1", "a2", "c2")
    sha = {name: f"{i:02x}" * 32 for i, name in enumerate(names, 1)}
    kinds = ("base", "base-config", "tokenizer", "adapter", "adapter-config", "adapter", "adapter-config")
    rows = [("artifacts", dict(sha256=sha[name], kind=kind, size=10, created_at=T0))
            for name, kind in zip(names, kinds)]
    rows.append(("bases", dict(id=1, name="tiny", source="/models/tiny", model_type="bert", sha256=sha["base"],
                               config_sha256=sha["base-config"], tokenizer_sha256=sha["tokenizer"],
                               config='{"hidden_size": 32}', parameters=1000, created_at=T0)))
    for i, name, status, size, score, params in ((1, "sst2", "ready", 64, 0.81, 600),
                                                 (2, "cola", "ready", 16, 0.22, 150),
                                                 (3, "rte", "failed", None, None, None)):
        ready = status == "ready"
        rows.append(("tasks", dict(
            id=i, name=name, position=i if ready else None, base_id=1, status=status, data_source=f"/data/{name}",
            task_type="classification", metric="accuracy", text_columns='["sentence"]', label_column="label",
            labels='["0", "1"]', adapter_size=size, adapter_sha256=sha.get(f"a{i}"), config_sha256=sha.get(f"c{i}"),
            score=score, trainable_params=params, created_at=T0 + timedelta(hours=i),
            ready_at=T0 + timedelta(hours=i, minutes=5) if ready else None)))
    for i, task, status, params, score, adapter, error in (
            (1, 1, "succeeded", 600, 0.81, sha["a1"], None), (2, 2, "failed", None, None, None, "out of memory"),
            (3, 2, "succeeded", 150, 0.22, sha["a2"], None),
            (4, 3, "interrupted", None, None, None, "process 42 on host died (killed or crashed)")):
        moment = T0 + timedelta(hours=task, minutes=i)
        rows.append(("runs", dict(
            id=i, task_id=task, status=status, hyperparams='{"lr": 0.001}', seed=0, versions='{"torch": "2.13.0"}',
            device="cpu", host="host", pid=42, data_fingerprint=f"fp{i}", validation_from="dev.tsv",
            trainable_params=params, score=score, best_epoch=1, adapter_sha256=adapter, error=error,
            started_at=moment, heartbeat_at=moment, finished_at=moment)))
    rows.append(("evaluations", dict(id=1, task_id=1, adapter_sha256=sha["a1"], tasks_present=2,
                                     data_fingerprint="fp1", score=0.80, created_at=T0 + timedelta(days=1))))
    for i, task, run, evaluation, key, split, epoch, value in (
            (1, 1, 1, None, "loss", "train", 1, 0.6), (2, 1, 1, None, "accuracy", "validation", 1, 0.81),
            (3, 2, 2, None, "loss", "train", 1, 0.7), (4, 2, 3, None, "loss", "train", 1, 0.65),
            (5, 2, 3, None, "accuracy", "validation", 1, 0.22), (6, 1, None, 1, "accuracy", "validation", None, 0.80)):
        rows.append(("metrics", dict(id=i, task_id=task, run_id=run, evaluation_id=evaluation, key=key, split=split,
                                     epoch=epoch, step=None, value=value,
                                     recorded_at=T0 + timedelta(hours=3, minutes=i))))
    with engine.begin() as connection:
        for table, values in rows:
            columns, params = ", ".join(values), ", ".join(f":{column}" for column in values)
            connection.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)


COLUMNS_0002 = {  # every table of revision 0002 and its columns
    **OLD_COLUMNS, "tasks": OLD_COLUMNS["tasks"] + ", current_version, retired_at",
    "evaluations": OLD_COLUMNS["evaluations"] + ", version",
    "task_versions": "id, task_id, version, run_id, data_source, data_fingerprint, adapter_size, adapter_sha256, "
                     "config_sha256, score, trainable_params, created_at, why",
    "task_events": "id, task_id, version, action, at, by, why",
}
STARTING_POINT = ("init_task_id", "init_version", "init_adapter_sha256", "selection")  # on runs since 0003


def old_rows(engine, tables: dict[str, str] = OLD_COLUMNS) -> dict[str, list[tuple]]:
    with engine.connect() as connection:
        return {table: [tuple(row) for row in connection.execute(text(f"SELECT {columns} FROM {table} ORDER BY 1"))]
                for table, columns in tables.items()}


def test_upgrade_from_0001_keeps_everything_and_makes_each_task_version_1(settings, run_cli):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url, "0001")
    engine = db.make_engine(settings.db_url)
    fill_0001(engine)
    before = old_rows(engine)

    refused = run_cli("list")
    assert refused.exit_code == 1
    assert refused.stderr == "Error: registry schema is at 0001, code expects 0005: run `registry db upgrade`\n"
    assert old_rows(engine) == before

    upgraded = run_cli("db", "upgrade")
    assert upgraded.exit_code == 0 and upgraded.stdout == "database at 0005\n", upgraded.output
    assert old_rows(engine) == before
    with engine.connect() as connection:
        versions = connection.execute(text(
            "SELECT task_id, version, run_id, data_source, data_fingerprint, adapter_size, adapter_sha256, "
            "config_sha256, score, trainable_params, why FROM task_versions ORDER BY task_id")).all()
        events = connection.execute(text("SELECT task_id, version, action, at, by, why FROM task_events "
                                         "ORDER BY id")).all()
        pointers = connection.execute(text("SELECT name, current_version, retired_at FROM tasks ORDER BY id")).all()
        evaluated = connection.execute(text("SELECT id, version FROM evaluations")).all()
    tasks = {row[0]: row for row in before["tasks"]}
    before_versions = "the task as published before versions (schema 0002)"
    assert [tuple(v) for v in versions] == [
        (1, 1, 1, "/data/sst2", "fp1", 64, tasks[1][12], tasks[1][13], 0.81, 600, before_versions),
        (2, 1, 3, "/data/cola", "fp3", 16, tasks[2][12], tasks[2][13], 0.22, 150, before_versions)]
    # each ready task's publication is its first event, at the time it became ready; the failed task has none
    assert [(e[0], e[1], e[2], e[4], e[5]) for e in events] == [
        (1, 1, "publish", "registry db upgrade", before_versions),
        (2, 1, "publish", "registry db upgrade", before_versions)]
    assert [e[3] for e in events] == [tasks[1][-1], tasks[2][-1]]
    assert [tuple(p) for p in pointers] == [("sst2", 1, None), ("cola", 1, None), ("rte", None, None)]
    assert [tuple(e) for e in evaluated] == [(1, 1)]

    listed = json.loads(run_cli("list", "--json").stdout)
    assert [(t["name"], t["version"], t["position"], t["score"]) for t in listed] == [
        ("sst2", 1, 1, 0.81), ("cola", 1, 2, 0.22), ("rte", None, None, None)]
    shown = json.loads(run_cli("show", "cola", "--json").stdout)
    assert [(v["version"], v["current"], v["run"], v["score"]) for v in shown["versions"]] == [(1, True, 3, 0.22)]
    assert [(e["action"], e["version"], e["by"]) for e in shown["events"]] == [("publish", 1, "registry db upgrade")]
    assert [(r["run"], r["status"]) for r in shown["runs"]] == [(2, "failed"), (3, "succeeded")]
    history = json.loads(run_cli("history", "--json").stdout)
    assert [(h["task"], h["version"], h["run"], h["evaluation"], h["value"]) for h in history] == [
        ("sst2", 1, 1, None, 0.6), ("sst2", 1, 1, None, 0.81), ("cola", None, 2, None, 0.7), ("cola", 1, 3, None, 0.65),
        ("cola", 1, 3, None, 0.22), ("sst2", 1, None, 1, 0.80)]

    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "0001")
    assert not {"task_versions", "task_events"} & set(inspect(engine).get_table_names())
    assert old_rows(engine) == before
    assert db.revision_at(settings.db_url) == "0001"
    command.upgrade(db.alembic_config(settings.db_url), "head")
    assert old_rows(engine) == before
    engine.dispose()


def test_upgrade_from_0002_keeps_everything_and_leaves_every_run_from_scratch(settings, run_cli, monkeypatch):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url, "0001")
    engine = db.make_engine(settings.db_url)
    fill_0001(engine)
    db.upgrade(settings.db_url, "0002")  # a registry as revision 0002's code leaves it: versions and events too
    before = old_rows(engine, COLUMNS_0002)
    assert len(before["task_versions"]) == len(before["task_events"]) == 2 and len(before["runs"]) == 4

    refused = run_cli("list")
    assert refused.exit_code == 1
    assert refused.stderr == "Error: registry schema is at 0002, code expects 0005: run `registry db upgrade`\n"
    assert old_rows(engine, COLUMNS_0002) == before

    upgraded = run_cli("db", "upgrade")
    assert upgraded.exit_code == 0 and upgraded.stdout == "database at 0005\n", upgraded.output
    assert old_rows(engine, COLUMNS_0002) == before
    with engine.connect() as connection:
        starts = connection.execute(text(f"SELECT {', '.join(STARTING_POINT)} FROM runs ORDER BY id")).all()
    assert [tuple(s) for s in starts] == [(None, None, None, None)] * 4
    shown = json.loads(run_cli("show", "cola", "--json").stdout)
    assert [(r["run"], r["init_from"], r["selection"]) for r in shown["runs"]] == [(2, None, None), (3, None, None)]
    matrix = json.loads(run_cli("history", "--matrix", "--json").stdout)
    assert matrix["fwt"] == [None, None] and matrix["fwt_mean"] is None

    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "0002")
    assert not set(STARTING_POINT) & {column["name"] for column in inspect(engine).get_columns("runs")}
    assert old_rows(engine, COLUMNS_0002) == before
    assert db.revision_at(settings.db_url) == "0002"
    command.upgrade(db.alembic_config(settings.db_url), "head")
    assert old_rows(engine, COLUMNS_0002) == before

    # the old revision's check refuses the new schema: its code knows neither 0003 nor its migration
    monkeypatch.setattr(db, "SCHEMA_REVISION", "0002")
    monkeypatch.setattr(db, "known_revisions", lambda: {"0001", "0002"})
    newer = r"^registry schema is at 0005, newer than this code \(0002\): upgrade adapter-registry$"
    with pytest.raises(SchemaMismatch, match=newer):
        db.check_schema(engine)
    engine.dispose()


def test_upgrade_from_0003_keeps_everything_and_leaves_the_registry_unmarked(settings, run_cli):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url, "0001")
    engine = db.make_engine(settings.db_url)
    fill_0001(engine)
    db.upgrade(settings.db_url, "0003")  # a registry as revision 0003's code leaves it
    columns = {**COLUMNS_0002, "runs": COLUMNS_0002["runs"] + ", " + ", ".join(STARTING_POINT)}
    before = old_rows(engine, columns)
    assert len(before["bases"]) == 1 and len(before["tasks"]) == 3

    refused = run_cli("list")
    assert refused.stderr == "Error: registry schema is at 0003, code expects 0005: run `registry db upgrade`\n"
    upgraded = run_cli("db", "upgrade")
    assert upgraded.exit_code == 0 and upgraded.stdout == "database at 0005\n", upgraded.output
    assert old_rows(engine, columns) == before
    with engine.connect() as connection:  # adopted by its first `verify --prune` (tests/test_ownership.py)
        assert connection.execute(text("SELECT registry_id FROM bases")).all() == [(None,)]

    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "0003")
    assert "registry_id" not in {column["name"] for column in inspect(engine).get_columns("bases")}
    assert old_rows(engine, columns) == before
    command.upgrade(db.alembic_config(settings.db_url), "head")
    assert old_rows(engine, columns) == before
    engine.dispose()


def test_upgrade_from_0004_keeps_everything_leaves_embeddings_empty_and_drops_pending(settings, run_cli):
    settings.home.mkdir(parents=True)
    db.upgrade(settings.db_url, "0001")
    engine = db.make_engine(settings.db_url)
    fill_0001(engine)
    db.upgrade(settings.db_url, "0004")  # a registry as revision 0004's code leaves it, and a run still `pending`
    with engine.begin() as connection:
        connection.execute(text("UPDATE runs SET status = 'pending', error = NULL, finished_at = NULL WHERE id = 4"))
    columns = {**COLUMNS_0002, "runs": COLUMNS_0002["runs"] + ", " + ", ".join(STARTING_POINT),
               "bases": COLUMNS_0002["bases"] + ", registry_id"}
    before = old_rows(engine, columns)
    assert [row[2] for row in before["runs"]] == ["succeeded", "failed", "succeeded", "pending"]

    refused = run_cli("list")
    assert refused.stderr == "Error: registry schema is at 0004, code expects 0005: run `registry db upgrade`\n"
    upgraded = run_cli("db", "upgrade")
    assert upgraded.exit_code == 0 and upgraded.stdout == "database at 0005\n", upgraded.output
    after = old_rows(engine, columns)
    assert after["runs"][3][2] == "failed" and after["runs"][3][:2] == before["runs"][3][:2]
    after["runs"][3] = before["runs"][3]  # the pending run became failed; nothing else changed
    assert after == before
    with engine.connect() as connection:
        assert connection.execute(text("SELECT embedding_sha256 FROM task_versions")).all() == [(None,), (None,)]
    assert refuses_status(engine, "pending") and not refuses_status(engine, "interrupted")
    assert [t["name"] for t in json.loads(run_cli("list", "--json").stdout)] == ["sst2", "cola", "rte"]

    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "0004")
    assert "embedding_sha256" not in {column["name"] for column in inspect(engine).get_columns("task_versions")}
    assert not refuses_status(engine, "pending")
    command.upgrade(db.alembic_config(settings.db_url), "head")
    assert refuses_status(engine, "pending")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check" if engine.dialect.name == "sqlite" else
                                       "SELECT 'ok'")).scalar() == "ok"
    engine.dispose()


def refuses_status(engine, status: str) -> bool:
    """Whether runs.status's CHECK refuses `status` (tried in a transaction that is rolled back)."""
    from sqlalchemy.exc import IntegrityError

    connection = engine.connect()
    try:
        with connection.begin() as transaction:
            connection.execute(text("UPDATE runs SET status = :status WHERE id = 1"), {"status": status})
            transaction.rollback()
        return False
    except IntegrityError:
        return True
    finally:
        connection.close()
