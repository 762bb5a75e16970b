"""Team mode on one host: a registry whose store is a directory or S3 (moto on loopback), on SQLite and on
PostgreSQL; verified caches; the base weights each run loaded. The several-host tests are in test_hosts.py."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.storage import cache
from registry.model import checkpoint
from registry.storage.config import Settings
from registry.storage.core import open_registry
from registry.storage.store import Store
from tests.test_reliability import add_args, sql, write_data


@pytest.fixture
def team(settings, store_url) -> Settings:
    """This test's registry (SQLite or PostgreSQL) with its store in a directory or an S3 bucket."""
    return Settings(home=settings.home, db_url=settings.db_url, store_url=store_url)


@pytest.fixture
def team_cli(team):
    runner = CliRunner()
    env = {"REGISTRY_HOME": str(team.home), "REGISTRY_DB_URL": team.db_url, "REGISTRY_STORE": team.store_url}
    return lambda *args: runner.invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def added(team, team_cli, tiny_base, tmp_path):
    """A registry with one ready task; returns the data it was trained on."""
    assert team_cli("init", "--base", str(tiny_base)).exit_code == 0
    data = write_data(tmp_path / "data.tsv")
    result = team_cli(*add_args("sentiment", data))
    assert result.exit_code == 0, result.output
    return data


def verify(team_cli, *args) -> dict:
    result = team_cli("verify", "--json", *args)
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["ok"] else 1)
    return report


def test_add_predict_verify_on_each_store(team, team_cli, added):
    store = Store(team.store_url)
    assert len(store.files()) == 7  # base weights, config, tokenizer; adapter, its config, text embedding; marker
    assert verify(team_cli)["ok"]
    result = team_cli("predict", "--task", "sentiment", "good great love", "--json")
    assert result.exit_code == 0, result.output


def test_verify_catches_a_corrupt_object_and_prunes_a_stray_one(team, team_cli, added):
    store = Store(team.store_url)
    shown = json.loads(team_cli("show", "sentiment", "--json").stdout)
    adapter = shown["adapter_sha256"]
    good = store.get(adapter)
    store.fs.pipe_file(store.path(adapter), good[:-7])  # a truncated object under the adapter's name
    stray = store.path("0" * 64)
    store.fs.makedirs(stray.rsplit("/", 1)[0], exist_ok=True)  # a no-op on S3
    store.fs.pipe_file(stray, b"left by a killed add-task")

    report = verify(team_cli)
    assert sorted((p["kind"], p["subject"]) for p in report["problems"]) == [
        ("corrupt", adapter),
        ("unreferenced", stray),
    ]
    result = team_cli("predict", "--task", "sentiment", "good")
    assert result.exit_code == 1 and "does not match its sha256" in result.stderr

    store.fs.pipe_file(store.path(adapter), good)
    report = verify(team_cli, "--prune")
    assert report["pruned"] == [stray] and report["ok"]
    assert not store.exists("0" * 64)


def test_a_corrupt_cached_base_is_discarded_and_fetched_again(team, team_cli, added, caplog):
    registry = open_registry(team)
    with registry.read() as session:
        base = registry.base(session)
    weights = team.cache_dir / f"base-{base.sha256}" / checkpoint.WEIGHTS_FILE
    original = weights.read_bytes()
    weights.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])  # one bit, same size

    report = verify(team_cli)
    assert [(p["kind"], p["message"]) for p in report["problems"]] == [("cache", (
        f"cache entry {weights.parent} has a model.safetensors that does not match its sha256 (corrupt or changed): "
        "the next command that needs it fetches it again; or remove it now with `registry verify --prune`"))]

    with caplog.at_level(logging.WARNING, logger="registry"):  # the library logs it; the CLI prints it on stderr
        assert checkpoint.unpack(registry, base) == weights.parent
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [("registry", "WARNING", (
        f"cache: the cached base {weights.parent} has a model.safetensors that does not "
        "match its sha256 (corrupt or changed): discarded, fetching it again from the store"))]
    assert weights.read_bytes() == original
    assert hashlib.sha256(original).hexdigest() == base.sha256
    assert verify(team_cli)["ok"]
    registry.close()


@pytest.mark.parametrize("damage", ["extra file", "no manifest", "tokenizer file"])
def test_other_damage_to_the_cached_base_is_found(team, team_cli, added, damage):
    registry = open_registry(team)
    with registry.read() as session:
        base = registry.base(session)
    directory = team.cache_dir / f"base-{base.sha256}"
    if damage == "extra file":
        (directory / "pytorch_model.bin").write_bytes(b"not ours")
    elif damage == "no manifest":
        (directory / cache.MANIFEST).unlink()
    else:
        tokenizer = directory / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes() + b" ")  # still valid JSON, other bytes
    report = verify(team_cli, "--prune")
    assert report["ok"] and report["discarded"] == [str(directory)]
    assert not directory.exists()
    assert team_cli("predict", "--task", "sentiment", "good").exit_code == 0  # fetched again
    assert cache.base_problem(directory, base.sha256, base.config_sha256) is None
    registry.close()


def test_a_corrupt_tokens_cache_is_discarded_and_made_again(team, team_cli, added):
    tokens = sorted((team.cache_dir / "tokens").glob("encoded-*.safetensors"))
    assert len(tokens) == 2  # train and validation split of the task
    assert all(cache.tokens_problem(path) is None for path in tokens)
    tokens[0].write_bytes(tokens[0].read_bytes()[:-4] + b"\0\0\0\0")

    report = verify(team_cli)
    assert [(p["kind"], p["subject"]) for p in report["problems"]] == [("cache", str(tokens[0]))]
    result = team_cli(*add_args("again", added))  # same data: same cache entries
    assert result.exit_code == 0, result.output
    assert (
        f"cache: the tokenised split {tokens[0]} does not match its sha256 (corrupt or changed): discarded, "
        "tokenising again"
        in result.stderr.splitlines()
    )
    remade = sorted((team.cache_dir / "tokens").glob("encoded-*.safetensors"))
    assert len(remade) == 2 and tokens[1] in remade  # the corrupt one made again (safetensors' header order, so
    assert all(cache.tokens_problem(path) is None for path in remade)  # its name, may differ from the first time)
    assert verify(team_cli)["ok"]


def test_runs_record_the_base_they_loaded_and_verify_checks_it(team, team_cli, added):
    registry = open_registry(team)
    with registry.read() as session:
        base = registry.base(session)
    registry.close()
    runs = json.loads(team_cli("runs", "--json").stdout)
    assert len(runs) == 1
    from sqlalchemy import create_engine, text

    engine = create_engine(team.db_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT versions FROM runs")).scalar_one()
    engine.dispose()
    versions = json.loads(versions) if isinstance(versions, str) else versions
    assert versions["base_sha256"] == base.sha256

    other = "f" * 64
    sql(team, f"UPDATE runs SET versions = '{json.dumps({**versions, 'base_sha256': other})}'")
    report = verify(team_cli)
    assert [(p["kind"], p["message"]) for p in report["problems"]] == [("run", (
        f"run 1 trained on base weights {other[:12]}, not this registry's base {base.sha256[:12]}: "
        "its task's scores are not comparable; re-add the task"))]


@pytest.mark.parametrize("store_url", ["s3"], indirect=True)  # a directory cannot be made unreachable
def test_store_unreachable_is_one_line_and_publishes_nothing(team, team_cli, added):
    """An S3 endpoint that refuses every connection: one clear line after the bounded retries; nothing published."""
    before = json.loads(team_cli("list", "--json").stdout)
    env = {
        "REGISTRY_HOME": str(team.home),
        "REGISTRY_DB_URL": team.db_url,
        "REGISTRY_STORE": team.store_url,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
    }  # port 9 (discard): nothing listens; in this process (the store opens a fresh fsspec instance per command)
    data = write_data(Path(team.home) / "other.tsv", seed=3)
    result = CliRunner().invoke(cli, add_args("unreachable", data), env=env)
    assert result.exit_code == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: the store {team.store_url} failed to ") \
        and "after 3 attempts" in line and "check that it is reachable" in line, result.stderr
    after = json.loads(team_cli("list", "--json").stdout)
    assert [t for t in after if t["name"] != "unreachable"] == before
    assert [t["status"] for t in after if t["name"] == "unreachable"] == [
        "failed"
    ]  # the run says why; the name is free
    assert verify(team_cli)["ok"]
