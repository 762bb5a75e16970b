"""init, list, show, history and db commands through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from registry.cli.main import cli
from registry.storage import db
from tests.helpers import REPO, one_line_error, snapshot


def test_init_then_list_is_empty(run_cli, tiny_base, settings):
    result = run_cli("init", "--base", str(tiny_base), "--json")
    assert result.exit_code == 0, result.output
    base = json.loads(result.stdout)
    assert base["model_type"] == "bert" and base["layers"] == 2 and base["hidden_size"] == 32
    weights = (tiny_base / "model.safetensors").read_bytes()
    stored = (settings.home / "artifacts" / base["sha256"][:2] / base["sha256"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == base["sha256"]
    assert len(stored) == len(weights)

    listed = run_cli("list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    assert "no tasks yet" in run_cli("list").stdout
    assert json.loads(run_cli("history", "--json").stdout) == []


def test_init_twice_is_refused_and_changes_nothing(run_cli, tiny_base, settings):
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    before = snapshot(settings)
    line = one_line_error(run_cli("init", "--base", str(tiny_base)))
    assert line == f"Error: the registry at {settings.home} already has a base: use another --home to start a new one"
    assert snapshot(settings) == before


def test_unknown_base_path_creates_nothing(run_cli, settings, tmp_path):
    before = snapshot(settings)
    line = one_line_error(run_cli("init", "--base", str(tmp_path / "nope")))
    assert line.startswith(f"Error: cannot load base checkpoint '{tmp_path / 'nope'}'")
    assert line.endswith("pass a directory with config.json and weights, or a hub id")
    assert not settings.home.exists()
    assert snapshot(settings) == before


def test_read_commands_need_a_registry(run_cli, settings):
    for command in (["list"], ["show", "cola"], ["history"]):
        line = one_line_error(run_cli(*command))
        assert "run `registry init --base PATH_OR_HUB_ID` first" in line
    assert not settings.home.exists()


def test_show_unknown_task(run_cli, tiny_base):
    run_cli("init", "--base", str(tiny_base))
    assert one_line_error(run_cli("show", "cola")) == "Error: no task named 'cola'; known tasks: (none)"
    assert one_line_error(run_cli("history", "cola")) == "Error: no task named 'cola'; known tasks: (none)"


def test_newer_schema_is_refused_and_unchanged(run_cli, tiny_base, settings):
    run_cli("init", "--base", str(tiny_base))
    engine = db.make_engine(settings.db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
    engine.dispose()
    before = snapshot(settings)
    for command in (["list"], ["db", "upgrade"], ["init", "--base", str(tiny_base)]):
        line = one_line_error(run_cli(*command))
        assert (
            line
            == f"Error: registry schema is at ffff9999, newer than this code ({db.SCHEMA_REVISION}): upgrade "
               "adapter-registry"
        )
    assert snapshot(settings) == before


def test_unstamped_database_is_not_adopted(run_cli, tiny_base, settings):
    run_cli("init", "--base", str(tiny_base))
    engine = db.make_engine(settings.db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM alembic_version")
    engine.dispose()
    # an unstamped database that has tables is not silently adopted
    line = one_line_error(run_cli("list"))
    assert line.endswith("holds tables but no registry schema: point --home or REGISTRY_DB_URL at a registry")


def test_db_current_and_upgrade(run_cli, tiny_base):
    assert run_cli("db", "current").stdout.splitlines() == ["database: (empty)", "code:     0005"]
    run_cli("init", "--base", str(tiny_base))
    assert run_cli("db", "current").stdout.splitlines() == ["database: 0005", "code:     0005"]
    assert run_cli("db", "upgrade").stdout.strip() == "database at 0005"


def test_non_registry_file_as_database(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "registry.db").write_bytes(b"not sqlite" * 500)
    before = (home / "registry.db").read_bytes()
    result = CliRunner().invoke(cli, ["--home", str(home), "list"])
    line = one_line_error(result)
    assert line.startswith("Error: sqlite:///") and "is not a registry database" in line
    assert (home / "registry.db").read_bytes() == before


def test_unreachable_postgres(tmp_path):
    result = CliRunner().invoke(cli, ["--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", "list"])
    line = one_line_error(result)
    assert line.startswith("Error: cannot open database postgresql+psycopg://nobody@127.0.0.1:1/none:")
    assert line.endswith("check --db / REGISTRY_DB_URL")


def test_debug_shows_the_traceback(tmp_path):
    """The real process: one line without --debug, the traceback of the library's error with it."""
    def registry(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "registry.cli", "--home", str(tmp_path / "none"), *args], cwd=REPO,
                              capture_output=True, text=True)

    plain, debug = registry("list"), registry("--debug", "list")
    assert plain.returncode == debug.returncode == 1
    assert plain.stderr.startswith("Error: no registry at") and len(plain.stderr.splitlines()) == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    # the frame that raised it
    assert 'registry/storage/core.py", line' in debug.stderr and "in open_registry" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("registry.errors.NotInitialised: no registry at")


def test_every_command_has_help_with_an_example():
    def walk(group: click.Group, prefix: str):
        for name, command in group.commands.items():
            yield f"{prefix} {name}", command
            if isinstance(command, click.Group):
                yield from walk(command, f"{prefix} {name}")

    for path, _command in walk(cli, "registry"):
        result = CliRunner().invoke(cli, [*path.split()[1:], "--help"])
        assert result.exit_code == 0, path
        assert "Example:" in result.output, f"{path} --help has no Example"


@pytest.mark.parametrize("command", [["list"], ["history"], ["history", "--matrix"], ["show", "x"], ["--help"]])
def test_read_commands_import_neither_torch_nor_the_orm(command, tmp_path, tiny_base):
    assert CliRunner().invoke(cli, ["--home", str(tmp_path), "init", "--base", str(tiny_base)]).exit_code == 0
    code = (
        "import sys\nfrom registry.cli.main import cli\n"
        f"try:\n    cli({command!r}, prog_name='registry')\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'datasets', 'alembic', 'fsspec', 'sqlalchemy.orm', 'fastapi', 'uvicorn',"
        " 'prometheus_client')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {"REGISTRY_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.real
def test_init_real_minilm(run_cli, minilm_path):
    result = run_cli("init", "--base", str(minilm_path), "--json")
    assert result.exit_code == 0, result.output
    base = json.loads(result.stdout)
    assert base["model_type"] == "bert" and base["layers"] == 6 and base["hidden_size"] == 384
    assert 22_000_000 < base["parameters"] < 23_500_000
