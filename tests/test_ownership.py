"""What the registry may delete: only files of its store's layout, in a store it marked as its own
(registry.storage.ownership).

Each test runs on SQLite and PostgreSQL; those about the store also on a directory and on S3 (moto on loopback).
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from registry.storage import db
from registry.storage.config import Settings
from registry.storage.ownership import MARKER
from registry.storage.store import Store
from tests.test_bundle import cli_for
from tests.helpers import make_settings, one_line_error


@pytest.fixture
def team(settings, store_url) -> Settings:
    """This test's registry (SQLite or PostgreSQL) with its store in a directory or an S3 bucket."""
    return Settings(home=settings.home, db_url=settings.db_url, store_url=store_url)


@pytest.fixture
def initialised(team, tiny_base) -> Settings:
    result = cli_for(team)("init", "--base", tiny_base)
    assert result.exit_code == 0, result.output
    return team


def put(store: Store, relative: str, data: bytes) -> str:
    path = f"{store.root}/{relative}"
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on S3
    store.fs.pipe_file(path, data)
    return path


def prune(settings: Settings):
    return cli_for(settings)("verify", "--prune", "--json")


def no_registry(settings: Settings) -> bool:
    return db.revision_at(settings.db_url) is None


@pytest.mark.parametrize("layout", ["home inside the store", "store is the home"])
def test_init_refuses_a_store_that_holds_the_home_or_database(settings, tiny_base, tmp_path, layout):
    x = tmp_path / "x"
    x.mkdir()
    thesis = x / "thesis.txt"
    thesis.write_text("t")
    home = x / "home"
    db_url = settings.db_url if settings.db_url.startswith("postgresql") else f"sqlite:///{home / 'registry.db'}"
    place = Settings(home=home, db_url=db_url, store_url=str(x if layout == "home inside the store" else home))
    line = one_line_error(cli_for(place)("init", "--base", tiny_base))
    assert line == (f"Error: the store {place.store_url} holds the registry's home {home}: the store holds only "
                    "artifacts; use another --store (the default is HOME/artifacts)")
    assert sorted(p.name for p in x.rglob("*")) == ["thesis.txt"] and thesis.read_text() == "t"
    assert no_registry(place)


def test_init_refuses_a_non_empty_store_that_is_no_registrys(team, tiny_base):
    store = Store(team.store_url)
    report = put(store, "finance/q3-report.csv", b"q3")
    line = one_line_error(cli_for(team)("init", "--base", tiny_base))
    assert line == (f"Error: the store {team.store_url} is not empty and no registry's (it holds {report}): "
                    "use an empty or new --store")
    assert store.files() == [report] and no_registry(team)


def test_two_registries_never_share_a_store(initialised, tiny_base, tmp_path, dialect):
    other, cleanup = make_settings(tmp_path / "b", dialect)
    other = Settings(home=other.home, db_url=other.db_url, store_url=initialised.store_url)
    store = Store(initialised.store_url)
    before = {path: store.fs.cat_file(path) for path in store.files()}
    owner = json.loads(before[f"{store.root}/{MARKER}"])["registry_id"]
    try:
        line = one_line_error(cli_for(other)("init", "--base", tiny_base))
        assert line == (f"Error: the store {initialised.store_url} belongs to another registry ({owner[:12]}; "
                        f"{MARKER}): two registries never share a store; use another --store")
        assert {path: store.fs.cat_file(path) for path in store.files()} == before and no_registry(other)
    finally:
        cleanup()


def test_prune_removes_only_unreferenced_files_of_the_stores_layout(initialised):
    store = Store(initialised.store_url)
    kept = {path: store.fs.cat_file(path) for path in store.files()}
    assert len(kept) == 4  # base weights, config, tokenizer, and the marker
    report = put(store, "finance/q3-report.csv", b"q3")
    lookalike = put(store, "ab" + "c" * 62, b"not in a shard directory")
    deep = put(store, f"x/12/{'12' * 32}", b"a shard name, but not at the store's root")
    stray = put(store, f"12/{'12' * 32}", b"left by a killed add-task")
    result = prune(initialised)
    found = json.loads(result.stdout)
    assert result.exit_code == 1 and found["pruned"] == [stray]
    assert sorted((p["kind"], p["subject"]) for p in found["problems"]) == sorted(
        ("foreign", path) for path in (report, lookalike, deep))
    assert {path: store.fs.cat_file(path) for path in store.files()} == {
        **kept, report: b"q3", lookalike: b"not in a shard directory",
        deep: b"a shard name, but not at the store's root"}


def test_prune_refuses_a_store_another_registry_marked(initialised):
    store = Store(initialised.store_url)
    put(store, MARKER, json.dumps({"format": "adapter-registry/store@1", "registry_id": "f" * 32}).encode())
    stray = put(store, f"12/{'12' * 32}", b"left by a killed add-task")
    line = one_line_error(prune(initialised))
    assert line.startswith(f"Error: the store {initialised.store_url} is not this registry's (its {MARKER} names "
                           f"registry ffffffffffff, this registry is ")
    assert line.endswith("): nothing removed; check --store")
    assert store.exists("12" * 32) and stray in store.files()


def test_a_registry_made_before_markers_is_adopted_by_prune_only_when_its_store_holds_nothing_foreign(initialised):
    store = Store(initialised.store_url)
    store.remove(f"{store.root}/{MARKER}")
    engine = db.make_engine(initialised.db_url)
    with engine.begin() as connection:  # as `db upgrade` to 0004 leaves a registry made before
        connection.execute(text("UPDATE bases SET registry_id = NULL"))
    thesis = put(store, "thesis.txt", b"t")
    stray = put(store, f"12/{'12' * 32}", b"left by a killed add-task")

    line = one_line_error(prune(initialised))
    assert line == (f"Error: the store {initialised.store_url} holds files the registry never writes ({thesis}) and "
                    f"no {MARKER}: nothing removed; move them out of the store, then run `registry verify --prune` "
                    "to adopt it")
    assert thesis in store.files() and stray in store.files()

    store.remove(thesis)
    result = prune(initialised)
    assert result.exit_code == 0 and json.loads(result.stdout)["pruned"] == [stray], result.output
    with engine.connect() as connection:
        recorded = connection.execute(text("SELECT registry_id FROM bases")).scalar()
    engine.dispose()
    assert json.loads(store.fs.cat_file(f"{store.root}/{MARKER}"))["registry_id"] == recorded is not None
    assert prune(initialised).exit_code == 0
