"""Helpers for tests: a snapshot of everything a registry holds, to prove a failed command changed nothing."""

from __future__ import annotations

import os
import random
import string
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from registry.storage import db
from registry.storage.config import Settings


def snapshot(settings: Settings) -> dict:
    """Every row of every table (sorted), plus every file under the home and the store, with its bytes."""
    state: dict = {"files": {}}
    for root in {settings.home, Path(settings.store_url)}:
        if root.exists():
            state["files"].update({str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
                                   and not p.name.endswith(("-wal", "-shm")) and p.suffix != ".db"})
    path = db.sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        state["db"] = None
        return state
    engine = create_engine(settings.db_url)
    with engine.connect() as connection:  # the table names, then every row as stored (no reflection: 5x faster)
        quote = connection.dialect.identifier_preparer.quote
        state["db"] = {name: sorted(map(tuple, connection.execute(text(f"SELECT * FROM {quote(name)}")).all()),
                                    key=repr)
                       for name in inspect(connection).get_table_names()}
    engine.dispose()
    return state


def one_line_error(result, exit_code: int = 1) -> str:
    """Assert the CLI failed with exactly one line on stderr and no traceback; return that line."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


SENTS = [
    "the film is a quiet triumph of craft",
    "a dull lifeless and predictable mess",
    "every scene feels alive and surprising",
    "i wanted my two hours back after this",
    "the cast gives it everything they have",
    "nothing here works not even the music",
    "warm funny and smart from start to end",
    "a tedious slog that never finds its feet",
    "one of the best films of the whole year",
    "it is loud long and utterly pointless",
]


def sentences(n: int) -> list[str]:
    """n distinct film-review sentences of 9+ words."""
    return [f"{SENTS[i % len(SENTS)]} number {i}" for i in range(n)]


def col(table, name: str) -> list:
    """A column of a loaded split (a pyarrow Table) as a python list."""
    return table.column(name).to_pylist()


POSITIVE = "good great love very good film".split()
NEGATIVE = "bad awful hate not good movie".split()


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label follows the words in them, so even the tiny model learns something."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(POSITIVE if label else NEGATIVE, k=5) + rng.choices(["the", "a", "this", "it"], k=2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("REGISTRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_settings(root: Path, dialect: str) -> tuple[Settings, Callable[[], None]]:
    """A registry location on SQLite, or on a fresh PostgreSQL schema; returns (settings, cleanup)."""
    home = root / "home"
    if dialect == "sqlite":
        return Settings(
            home=home, db_url=f"sqlite:///{home / 'registry.db'}", store_url=str(home / "artifacts")
        ), lambda: None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def cleanup() -> None:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    separator = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    return Settings(home=home, db_url=url, store_url=str(home / "artifacts")), cleanup


TINY_WORDS = "the a an is was not good bad movie film great awful it this that and of to i love hate very".split()


def write_tiny_bert(directory: Path) -> Path:
    """A tiny random BERT checkpoint with a small WordPiece tokenizer, saved as `save_pretrained` does."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = list(
        dict.fromkeys(specials + TINY_WORDS + pieces + [f"##{p}" for p in string.ascii_lowercase + string.digits])
    )
    # The vocabulary goes in as a dict: transformers 5 ignores `vocab_file=` here and would leave only the specials.
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_family(directory: Path, family: str) -> Path:
    """A tiny random RoBERTa (byte-level BPE, no segment ids) or DistilBERT (WordPiece) checkpoint and tokenizer."""
    import json

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (DistilBertConfig, DistilBertModel, DistilBertTokenizerFast, RobertaConfig, RobertaModel,
                              RobertaTokenizerFast)

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family == "roberta":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([" ".join(TINY_WORDS)] * 20, vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        trained = json.loads(bpe._tokenizer.to_str())["model"]
        tokenizer = RobertaTokenizerFast(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]])
        model = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=37, max_position_embeddings=130,
                                           type_vocab_size=1, pad_token_id=tokenizer.pad_token_id))
    elif family == "distilbert":
        vocab = list(
            dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, *string.ascii_lowercase])
        )
        tokenizer = DistilBertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
        model = DistilBertModel(DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                                 max_position_embeddings=128, pad_token_id=0))
    else:
        raise ValueError(f"no tiny {family}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tsv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n")


def write_pickled_copy(base: Path, directory: Path) -> Path:
    """`base` with its safetensors weights replaced by a `pytorch_model.bin`: a checkpoint the registry must refuse
    without ever unpickling it."""
    directory.mkdir()
    for item in Path(base).iterdir():
        if item.suffix != ".safetensors":
            (directory / item.name).write_bytes(item.read_bytes())
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
    return directory


def write_task_data(root: Path) -> Path:
    """Three small tasks under `root`: sentiment (one text, string labels), pairs (a pair) and similarity
    (regression)."""
    for split, n, seed in (("train", 48, 0), ("dev", 16, 1)):
        write_tsv(root / "sentiment" / f"{split}.tsv", ["sentence", "label"],
                  [(s, "positive" if label else "negative") for s, label in sentiment_rows(n, seed)])
        pairs = zip(sentiment_rows(n, seed + 10), sentiment_rows(n, seed + 20))
        write_tsv(
            root / "pairs" / f"{split}.tsv",
            ["sentence1", "sentence2", "label"],
            [(a, b, int(x == y)) for (a, x), (b, y) in pairs],
        )
        pairs = zip(sentiment_rows(n, seed + 30), sentiment_rows(n, seed + 40))
        write_tsv(root / "similarity" / f"{split}.tsv", ["sentence1", "sentence2", "score"],
                  [(a, b, 1.0 + 2.5 * x + 1.5 * y) for (a, x), (b, y) in pairs])
    return root


def stop(process, seconds: float = 30) -> None:
    """Stop a server process: SIGTERM (it drains), then SIGKILL if it is still there after `seconds`."""
    import signal
    import subprocess

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=seconds)
