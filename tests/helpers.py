"""Helpers for tests: a snapshot of everything a registry holds, to prove a failed command changed nothing."""

from __future__ import annotations

import random
from pathlib import Path

from sqlalchemy import MetaData, create_engine

from registry import db
from registry.config import Settings


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
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        state["db"] = {name: sorted(map(tuple, connection.execute(table.select()).all()), key=repr)
                       for name, table in metadata.tables.items()}
    engine.dispose()
    return state


def one_line_error(result, exit_code: int = 1) -> str:
    """Assert the CLI failed with exactly one line on stderr and no traceback; return that line."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


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
