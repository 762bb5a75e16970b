"""Where a registry lives: home directory, database URL and artifact store, from options or environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = ".registry"


@dataclass(frozen=True)
class Settings:
    """The resolved locations of one registry."""

    home: Path
    db_url: str
    store_url: str

    @property
    def cache_dir(self) -> Path:
        """Machine-local cache: tokenised data and the unpacked base checkpoint."""
        return self.home / "cache"


@dataclass(frozen=True)
class ServeLimits:
    """`registry serve`'s batching and request limits; `metadata` holds each option's help (and a float's minimum)."""

    max_batch_size: int = field(default=32, metadata={"help": "Most inputs in one batch window (the model's batch)."})
    max_batch_tokens: int = field(default=8192, metadata={
        "help": "Most padded tokens (inputs x longest) in one forward pass; a window is cut to fit."})
    max_wait_ms: float = field(default=5.0, metadata={
        "min": 0.0, "help": "How long the batcher waits after the oldest queued input for a window to fill."})
    max_queue: int = field(default=1024, metadata={
        "help": "Most inputs waiting; a request that would pass it gets 503 with Retry-After."})
    max_inputs: int = field(default=256, metadata={"help": "Most inputs in one request (413 beyond)."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body in bytes (413 beyond)."})
    poll_seconds: float = field(default=2.0, metadata={
        "min": 0.1, "help": "From the registry: how often to look for published, replaced or dropped tasks."})


def resolve(home: str | os.PathLike | None = None, db: str | None = None, store: str | None = None) -> Settings:
    """Options win over REGISTRY_HOME / REGISTRY_DB_URL / REGISTRY_STORE, which win over `./.registry`."""
    home_path = Path(home or os.environ.get("REGISTRY_HOME") or DEFAULT_HOME).absolute()
    db_url = db or os.environ.get("REGISTRY_DB_URL") or f"sqlite:///{home_path / 'registry.db'}"
    store_url = store or os.environ.get("REGISTRY_STORE") or str(home_path / "artifacts")
    return Settings(home=home_path, db_url=db_url, store_url=store_url)
