"""Issue 14: untrusted bundles and checkpoints run nothing, the user's files survive, normal use does not crash.

The one-line refusals are rows of tests/test_bad_input.py; here are the cases that need more than one
command or real processes: planted code proven live and never run, a decompression bomb under a
file-size limit, two `init`s at once, a failed import into a new home, store failures, a half-precision
base, a diverging run, the history matrix before `eval`, and `verify` on tasks that cannot load.
Every test runs on SQLite and PostgreSQL where a database is involved.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from registry.cli.main import cli
from registry.model import checkpoint
from registry.storage.config import Settings
from registry.formats import sha256_of
from registry.formats import tensor_header
from tests.bad_bundles import plant_code, write_bad_bundles
from tests.conftest import REPO
from tests.helpers import make_settings, one_line_error, sentiment_rows, snapshot


def env_of(settings: Settings) -> dict[str, str]:
    return {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
            "REGISTRY_STORE": settings.store_url}


def cli_for(settings: Settings):
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(map(str, args)), env=env_of(settings))


def write_data(path: Path, n: int = 48, seed: int = 0) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in sentiment_rows(n, seed)))
    return path


ADD = ("--epochs", "1", "--batch-size", "16", "-q")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_base) -> Path:
    """A good bundle of one task, 'sentiment', exported from a SQLite registry on the tiny base."""
    root = tmp_path_factory.mktemp("safety-bundle")
    settings, _ = make_settings(root, "sqlite")
    invoke = cli_for(settings)
    assert invoke("init", "--base", tiny_base).exit_code == 0
    result = invoke("add-task", "sentiment", "--data", write_data(root / "train.tsv"), *ADD)
    assert result.exit_code == 0, result.output
    assert invoke("export", "--output", root / "bundle").exit_code == 0
    return root / "bundle"


@pytest.fixture
def invoke(settings):
    return cli_for(settings)


# --------------------------------------------------------------------------------------------
# 1. code shipped with a bundle or checkpoint never runs


def test_planted_code_is_live_but_never_runs(tiny_base, bundle, invoke, settings, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil-base"
    shutil.copytree(tiny_base, evil)
    plant_code(evil, marker)
    from transformers import AutoConfig

    AutoConfig.from_pretrained(evil, trust_remote_code=True)  # the payload is real: transformers runs it when allowed
    assert marker.read_text() == "ran"
    marker.unlink()

    line = one_line_error(invoke("init", "--base", evil))
    assert line == (f"Error: base {str(evil)!r}: config.json names code to run (auto_map): the registry never runs "
                    "code from a checkpoint; use a checkpoint of a supported type without custom code")
    assert not settings.home.exists()
    bundles = write_bad_bundles(bundle, tmp_path / "bad", marker)
    with tarfile.open(tmp_path / "code.tar", "w") as archive:
        archive.add(bundles["code-unlisted"], arcname="b")
    for path in (bundles["code-listed"], bundles["code-unlisted"], bundles["auto-map"], tmp_path / "code.tar"):
        assert "Error: " in one_line_error(invoke("import", path))
        assert "Error: " in one_line_error(invoke("predict", "--bundle", path, "--task", "sentiment", "good"))
    assert not marker.exists() and not settings.home.exists()


# --------------------------------------------------------------------------------------------
# 2. a decompression bomb is refused before anything is extracted


def test_bomb_and_oversized_members_are_refused_before_extracting(bundle, tmp_path):
    bundles = write_bad_bundles(bundle, tmp_path / "bad", tmp_path / "marker")
    assert (tmp_path / "bad" / "bomb.tar.gz").stat().st_size < 1 << 20  # < 1 MiB that expands to 64 MiB
    # This process may write at most 8 MiB to one file while the commands run (in it, through CliRunner): a write
    # past that fails (EFBIG; Python ignores SIGXFSZ) and the command would end in another error than the refusal.
    limit = 8 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert hard == resource.RLIM_INFINITY or hard > limit
    for name, problem in (("bomb", "is a compressed or damaged tar"), ("big-member", "bytes, manifest.json says")):
        path = str(bundles[name])
        for command in (["import", path], ["predict", "--bundle", path, "--task", "sentiment", "hi"]):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                out = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), *command])
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            assert out.exit_code == 1 and out.stderr.count("\n") == 1, (out.exit_code, out.stderr)
            assert problem in out.stderr, out.stderr
    assert not (tmp_path / "home").exists()


# --------------------------------------------------------------------------------------------
# 3. text from outside is printed safely


def test_outside_text_is_printed_escaped(invoke, tiny_base, tmp_path):
    assert invoke("init", "--base", tiny_base).exit_code == 0
    data = tmp_path / "escape.tsv"
    yes = "\x1b[2Jyes"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{yes if y else 'no'}\n" for s, y in sentiment_rows(40, 3)))
    line = one_line_error(invoke("add-task", "escape", "--data", data, *ADD))  # refused at the door (issue 21.4)
    assert "\x1b" not in line and "the label '\\x1b[2Jyes' holds the non-printable character U+001B" in line
    assert "\x1b" not in one_line_error(invoke("show", "\x1b[2Jx"))


# --------------------------------------------------------------------------------------------
# 4. export --force replaces a previous bundle, nothing else


def test_export_force_replaces_only_a_previous_bundle(bundle, invoke, tiny_base, tmp_path, monkeypatch):
    assert invoke("import", bundle).exit_code == 0
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    line = one_line_error(invoke("export", "--output", ".", "--force"))
    assert line == (f"Error: {work} is not a bundle (it holds files no bundle manifest lists): "
                    "--force replaces only a bundle written by `registry export`; choose another --output")
    assert (work / "notes.txt").read_text() == "mine"

    out = work / "b"
    assert invoke("export", "--output", out).exit_code == 0
    (out / "adapters" / "mine.txt").write_text("added by hand")  # no longer only a bundle
    assert "is not a bundle" in one_line_error(invoke("export", "--output", out, "--force"))
    (out / "adapters" / "mine.txt").unlink()
    assert invoke("export", "--output", out, "--force").exit_code == 0  # a previous bundle: replaced
    assert sorted(p.name for p in work.iterdir()) == ["b", "notes.txt"] and (work / "notes.txt").read_text() == "mine"


def test_export_refuses_the_registry_through_a_symlink(invoke, settings, bundle, tmp_path):
    assert invoke("import", bundle).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(settings.home, target_is_directory=True)
    before = snapshot(settings)
    line = one_line_error(invoke("export", "--output", link, "--force"))
    assert line == (f"Error: --output {link} is the registry home {settings.home.resolve()}: "
                    "write the bundle outside the registry (another --output)")
    assert snapshot(settings) == before and link.is_symlink()


# --------------------------------------------------------------------------------------------
# 5. two inits at once: the primary key lets exactly one base in


RACE = """
import sys, time
from pathlib import Path
from registry.model import checkpoint
from registry.storage.config import Settings
from registry.errors import AlreadyInitialised
home, url, base, me, other = sys.argv[1:]
loaded = checkpoint.load_checkpoint(base)
Path(me).touch()
while not Path(other).exists():  # both have loaded: now both create at once
    time.sleep(0.01)
try:
    checkpoint.create(Settings(home=Path(home), db_url=url, store_url=home + "/artifacts"), base, "tiny", loaded,
                      me[-1] * 32)
    print("WON")
except AlreadyInitialised as exc:
    print("LOST", exc)
"""


def test_two_inits_at_once_exactly_one_wins(settings, tiny_base, tmp_path, invoke, bundle):
    ready = [tmp_path / "ready-1", tmp_path / "ready-2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", RACE, str(settings.home), settings.db_url, str(tiny_base),
                                   str(ready[i]), str(ready[1 - i])],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
                 for i in range(2)]
    try:
        outputs = sorted(process.communicate(timeout=300)[0].strip() for process in processes)
    finally:
        for process in processes:
            process.kill()
    assert outputs[1] == "WON" and outputs[0] == (
        f"LOST the registry at {settings.home} already has a base (another `init` won): "
        "use another --home to start a new one")
    engine = create_engine(settings.db_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM bases")).scalars().all() == [1]
        if engine.dialect.name == "postgresql":  # the sequence moved past the explicit id: a later insert gets 2
            assert connection.execute(text("SELECT nextval(pg_get_serial_sequence('bases', 'id'))")).scalar() == 2
    engine.dispose()
    assert invoke("verify").exit_code == 0  # the loser left no file behind
    assert invoke("import", bundle).exit_code == 0 and invoke("predict", "--task", "sentiment", "good").exit_code == 0


# --------------------------------------------------------------------------------------------
# 6 and 14. a failed import into a new home leaves nothing; a store that cannot be written is named


def blocked_store(store: Path, keep: set[str]) -> None:
    """A store in which every shard directory but `keep` is a file: writing any other artifact fails (even as root)."""
    store.mkdir(parents=True, exist_ok=True)
    for n in range(256):
        if f"{n:02x}" not in keep and not (store / f"{n:02x}").exists():
            (store / f"{n:02x}").write_text("in the way\n")


def test_failed_import_into_a_new_home_leaves_nothing(dialect, tmp_path, pg_skip_reason, bundle):
    if dialect == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path, dialect)
    store = tmp_path / "store"
    settings = Settings(home=settings.home, db_url=settings.db_url, store_url=str(store))
    manifest = json.loads((bundle / "manifest.json").read_text())
    blocked_artifact(store, manifest["tasks"][0]["adapter_sha256"])  # the base can be stored; the adapter cannot
    before = snapshot(settings)
    try:
        line = one_line_error(cli_for(settings)("import", bundle))
        assert line.startswith("Error: cannot write ") and f"in the store {store}: Is a directory" in line, line
        assert snapshot(settings) == before and not settings.home.exists()
        if dialect == "postgresql":  # no tables either (SQLite: no database file, in the snapshot)
            engine = create_engine(settings.db_url)
            assert inspect(engine).get_table_names() == []
            engine.dispose()
    finally:
        cleanup()


def blocked_artifact(store: Path, sha: str) -> None:
    """A store holding no file, in which artifact `sha` cannot be written: a directory is in its place (an init
    refuses a store holding files that are not a registry's)."""
    (store / sha[:2] / sha).mkdir(parents=True)


def test_a_failed_init_leaves_nothing(settings, tiny_base):
    store = Path(settings.store_url)
    blocked_artifact(store, sha256_of(checkpoint.load_checkpoint(str(tiny_base)).weights))
    before = snapshot(settings)
    line = one_line_error(cli_for(settings)("init", "--base", tiny_base))
    assert line.startswith(f"Error: cannot write {store}/") and "Is a directory" in line, line
    assert snapshot(settings) == before
    if settings.db_url.startswith("postgresql"):
        engine = create_engine(settings.db_url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()


def test_a_store_write_failure_fails_the_run_and_names_the_path(invoke, settings, tiny_base, tmp_path):
    assert invoke("init", "--base", tiny_base).exit_code == 0
    store = Path(settings.store_url)
    blocked_store(store, keep=set())
    line = one_line_error(invoke("add-task", "sentiment", "--data", write_data(tmp_path / "t.tsv"), *ADD))
    assert line.startswith(f"Error: cannot write {store}/") and "File exists" in line, line
    runs = json.loads(invoke("runs", "--json").stdout)
    assert [(r["status"], r["error"]) for r in runs] == [("failed", line.removeprefix("Error: "))]
    assert json.loads(invoke("list", "--json").stdout)[0]["status"] == "failed"


# --------------------------------------------------------------------------------------------
# 8. a half-precision base is stored as float32 and trains


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_is_stored_as_float32_and_trains(invoke, settings, tiny_base, tmp_path, dtype):
    from transformers import BertModel

    half = tmp_path / "half"
    shutil.copytree(tiny_base, half)
    BertModel.from_pretrained(tiny_base).to(dtype).save_pretrained(half)
    assert {v.dtype for v in safetensors.torch.load_file(half / "model.safetensors").values()} == {dtype}
    result = invoke("init", "--base", half)
    assert result.exit_code == 0, result.output
    name = str(dtype).removeprefix("torch.")
    said = f"base {half} is saved in {name}: stored as float32, which adapters train against"
    assert result.stderr.splitlines()[-1] == said
    engine = create_engine(settings.db_url)
    with engine.connect() as connection:
        sha = connection.execute(text("SELECT sha256 FROM bases")).scalar_one()
    engine.dispose()
    header = tensor_header((Path(settings.store_url) / sha[:2] / sha).read_bytes())
    assert {entry["dtype"] for entry in header.values()} == {"F32"}
    result = invoke("add-task", "sentiment", "--data", write_data(tmp_path / "t.tsv"), *ADD)
    assert result.exit_code == 0, result.output
    losses = [row["value"] for row in json.loads(invoke("history", "--json").stdout) if row["metric"] == "loss"]
    assert losses and all(loss == loss and loss < 10 for loss in losses)  # finite, not NaN


# --------------------------------------------------------------------------------------------
# 9. the matrix before any eval; 10. a run that diverges


def test_history_matrix_is_blank_before_eval(invoke, tiny_base, tmp_path):
    assert invoke("init", "--base", tiny_base).exit_code == 0
    for name, seed in (("one", 0), ("two", 1)):
        assert invoke("add-task", name, "--data", write_data(tmp_path / f"{name}.tsv", seed=seed), *ADD).exit_code == 0
    result = invoke("history", "--matrix")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["after", "adding", "one", "two"] and lines[2].split()[0] == "two"
    # R[1][0] blank: not measured yet; FWT blank: no task has a run from scratch beside one from a source
    assert len(lines[2].split()) == 2 and lines[-1].split()[:5] == ["ACC", "BWT", "FWT", "vs", "scratch"]
    matrix = json.loads(invoke("history", "--matrix", "--json").stdout)
    assert matrix["matrix"][1][0] is None and matrix["acc"] is None and matrix["bwt"] is None
    assert matrix["fwt"] == [None, None] and matrix["fwt_mean"] is None
    assert invoke("eval", "one").exit_code == 0
    assert json.loads(invoke("history", "--matrix", "--json").stdout)["bwt"] is not None


def test_a_diverging_run_fails_clearly(invoke, tiny_base, tmp_path):
    assert invoke("init", "--base", tiny_base).exit_code == 0
    line = one_line_error(invoke("add-task", "wild", "--data", write_data(tmp_path / "t.tsv"), *ADD, "--lr", "1e10"))
    assert line.startswith("Error: ") and line.endswith(": lower --lr (it was 1e+10)"), line
    assert " became NaN at epoch 1 step " in line or " became infinite at epoch 1 step " in line, line
    runs = json.loads(invoke("runs", "--json").stdout)
    assert [(r["status"], r["error"]) for r in runs] == [("failed", line.removeprefix("Error: "))]
    assert json.loads(invoke("list", "--json").stdout)[0]["status"] == "failed"


# --------------------------------------------------------------------------------------------
# 7. verify loads nothing but checks that every stored task fits its base


def test_verify_finds_tasks_that_cannot_load(invoke, settings, bundle):
    assert invoke("import", bundle).exit_code == 0
    assert invoke("verify").exit_code == 0
    engine = create_engine(settings.db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE tasks SET adapter_size = 4, labels = :labels"),
                           {"labels": json.dumps(["a", "b", "c"])})
        connection.execute(text("UPDATE task_versions SET adapter_size = 4"))  # the version the task row carries
    engine.dispose()
    result = invoke("verify")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "the config of ready task 'sentiment' says labels is ['0', '1'], but the task's is ['a', 'b', 'c']: "
        "restore the database and store from a backup",
        "the adapter of ready task 'sentiment' holds tensor "
        "'encoder.layer.0.attention.output.dropout.adapter.down_bias' of shape [64], "
        "where this base and task need [4]: restore the database and store from a backup"]
