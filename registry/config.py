"""Where a registry lives: home directory, database URL and artifact store, from options or environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def resolve(home: str | os.PathLike | None = None, db: str | None = None, store: str | None = None) -> Settings:
    """Options win over REGISTRY_HOME / REGISTRY_DB_URL / REGISTRY_STORE, which win over `./.registry`."""
    home_path = Path(home or os.environ.get("REGISTRY_HOME") or DEFAULT_HOME).absolute()
    db_url = db or os.environ.get("REGISTRY_DB_URL") or f"sqlite:///{home_path / 'registry.db'}"
    store_url = store or os.environ.get("REGISTRY_STORE") or str(home_path / "artifacts")
    return Settings(home=home_path, db_url=db_url, store_url=store_url)
