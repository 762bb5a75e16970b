"""Every "Error: unexpected …" and misleading line of issue 21, as a row: one line that names the problem and the fix.

Each row runs the real CLI in-process against a real registry (SQLite and PostgreSQL) with one trained task, and
checks that nothing changed. The fuzzer (tests/test_fuzz_cli.py) looks for their siblings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli.main import cli
from registry.storage.config import resolve
from tests.helpers import make_settings, one_line_error, snapshot, write_pickled_copy, write_task_data

DOWN = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def registry(request, tmp_path_factory, tiny_base, pg_skip_reason):
    if request.param == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    root = tmp_path_factory.mktemp(f"oneline-{request.param}")
    settings, cleanup = make_settings(root, request.param)
    data = write_task_data(root / "data")
    (root / "wrong").mkdir()
    for split in ("train", "dev"):
        (root / "wrong" / f"{split}.tsv").write_text("review\tstars\ngood film\t5\nbad film\t1\nfine\t3\n")
    pickled = write_pickled_copy(Path(tiny_base), root / "pickled")
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
           "REGISTRY_STORE": settings.store_url}
    runner = CliRunner()
    for args in (["init", "--base", str(tiny_base)],
                 ["add-task", "sentiment", "--data", str(data / "sentiment"), "--epochs", "1", "-q",
                  "--max-length", "12"],
                 ["add-task", "old", "--data", str(data / "sentiment"), "--epochs", "1", "-q", "--max-length", "12"],
                 ["retire", "old"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    yield {"settings": settings, "env": env, "runner": runner, "data": data, "root": root, "pickled": pickled}
    cleanup()


ROWS = [  # (id, args, exit code, words the line must hold: the problem, then the fix)
    ("db-mysql", ["--db", "mysql://x", "list"], 1, ["runs on sqlite and postgresql only", "sqlite:///PATH"]),
    ("db-not-a-url", ["--db", "notaurl", "list"], 1, ["is not a database URL", "sqlite:///PATH"]),
    ("db-bad-port", ["--db", "postgresql://x:port/y", "list"], 1, ["is not a database URL", "postgresql://"]),
    ("store-unknown", ["--store", "foo://x", "verify"], 1, ["foo:// cannot hold a store", "give a directory"]),
    ("store-gs", ["--store", "gs://b", "verify"], 1, ["needs a package that is not installed", "install it"]),
    ("store-devnull", ["--store", "/dev/null", "verify"], 1, ["is not a directory", "give a directory"]),
    ("store-zip", ["--store", "zip://x", "verify"], 1, ["zip:// cannot hold a store", "give a directory"]),
    ("store-http", ["--store", f"{DOWN}/s", "verify"], 1, ["http:// cannot hold a store", "give a directory"]),
    ("plot-missing-dir", ["history", "--plot", "{root}/none/p.png"], 2, ["no directory", "create it first"]),
    ("plot-txt", ["history", "--plot", "{root}/p.txt"], 2, ["p.txt", "name a .png, .pdf, .svg file"]),
    ("plot-dev-full", ["history", "--plot", "/dev/full"], 2, ["is not a regular file", "name a file"]),
    ("lr-1e300", ["add-task", "new", "--data", "{data}/sentiment", "--lr", "1e300"], 1,
     ["more than float32 holds", "like 1e-3"]),
    ("seed-huge", ["add-task", "new", "--data", "{data}/sentiment", "--seed", "99999999999999999999"], 2,
     ["--seed", "0<=x<=4294967295"]),
    ("adapter-size-huge", ["add-task", "new", "--data", "{data}/sentiment", "--adapter-size", "100000000"], 1,
     ["more than 4 x the base's hidden size 32", "--adapter-size 128 or less"]),
    ("retired-name", ["add-task", "old", "--data", "{data}/sentiment"], 1,
     ["already exists (retired)", "registry restore old"]),
    ("serve-bad-host", ["serve", "--host", "999.1.1.1", "--port", "0"], 1, ["cannot listen on 999.1.1.1",
                                                                            "check --host"]),
    ("eval-wrong-columns", ["eval", "sentiment", "--data", "{root}/wrong"], 1,
     ["has columns 'review', 'stars'", "give data with those columns"]),
    ("pickled-base", ["--home", "{root}/fresh", "--db", "sqlite:///{root}/fresh.db", "init", "--base", "{pickled}"],
     1, ["pytorch_model.bin", "never loads", "safe_serialization=True"]),
]


@pytest.mark.parametrize("case", ROWS, ids=[row[0] for row in ROWS])
def test_one_line_that_names_the_problem_and_the_fix(registry, case):
    _, args, code, words = case
    args = [arg.format(root=registry["root"], data=registry["data"], pickled=registry["pickled"]) for arg in args]
    before = snapshot(registry["settings"])
    line = one_line_error(registry["runner"].invoke(cli, args, env=registry["env"]), code)
    assert line.startswith("Error: ") and not line.startswith("Error: unexpected"), line
    assert all(word in line for word in words), line
    assert " pick another --port" not in line and "restore from a backup" not in line
    assert snapshot(registry["settings"]) == before
    assert not (registry["root"] / "fresh").exists() and not (registry["root"] / "fresh.db").exists()


def test_list_with_only_retired_tasks_says_so(registry):
    runner, env = registry["runner"], registry["env"]
    result = runner.invoke(cli, ["list"], env=env)
    assert result.exit_code == 0 and "sentiment" in result.output
    assert runner.invoke(cli, ["retire", "sentiment"], env=env).exit_code == 0
    try:
        result = runner.invoke(cli, ["list"], env=env)
        assert result.exit_code == 0
        assert result.output.strip() == "(no ready tasks; 2 retired: registry list --all, registry restore NAME)"
    finally:
        assert runner.invoke(cli, ["restore", "sentiment"], env=env).exit_code == 0


def test_verify_with_the_s3_store_down_is_one_line(registry, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": DOWN, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                        "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    env = {**registry["env"], "REGISTRY_STORE": "s3://down/store"}
    line = one_line_error(registry["runner"].invoke(cli, ["verify"], env=env))
    assert "the store s3://down/store failed to" in line and "check that it is reachable" in line, line


def test_a_home_with_a_question_mark_stays_a_file_name(tmp_path, tiny_base):
    home = tmp_path / "a?mode=ro#x"
    settings = resolve(home=home)
    result = CliRunner().invoke(cli, ["init", "--base", str(tiny_base)], env={"REGISTRY_HOME": str(home),
                                                                              "REGISTRY_DB_URL": "",
                                                                              "REGISTRY_STORE": ""})
    assert result.exit_code == 0, result.output
    assert (home / "registry.db").is_file() and settings.home == home
    assert CliRunner().invoke(cli, ["list"], env={"REGISTRY_HOME": str(home)}).exit_code == 0
