"""The frozen base: load a checkpoint with transformers, register it once, unpack it for training."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Row

from registry import cache, db
from registry.adapters import ARCHITECTURES
from registry.config import Settings
from registry.core import Registry, database_exists, open_registry
from registry.errors import AlreadyInitialised, BaseModelError, NotInitialised
from registry.models import Artifact, BaseCheckpoint
from registry.store import Store, write_atomic

WEIGHTS_FILE, CONFIG_FILE = cache.WEIGHTS_FILE, cache.CONFIG_FILE


@dataclass(frozen=True)
class Checkpoint:
    """A base checkpoint as the files `save_pretrained` writes."""

    model_type: str
    parameters: int
    config: dict
    weights: bytes
    config_bytes: bytes
    tokenizer_files: dict[str, bytes]


def load_checkpoint(source: str) -> Checkpoint:
    """Load `source` (a directory or hub id) with transformers and serialise it; refuse unsupported models."""
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    try:
        model = AutoModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelError(f"cannot load base checkpoint {source!r}: {db.first_line(exc)}; pass a directory with config.json and weights, or a hub id") from exc
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise BaseModelError(f"base {source!r} is a {model_type!r} model; supported: {', '.join(sorted(ARCHITECTURES))}")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    if WEIGHTS_FILE not in files:
        raise BaseModelError(f"base {source!r} saved as several weight shards; only single-file checkpoints are supported")
    weights = files.pop(WEIGHTS_FILE)
    config_bytes = files.pop(CONFIG_FILE)
    return Checkpoint(
        model_type=model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        config=json.loads(config_bytes),
        weights=weights,
        config_bytes=config_bytes,
        tokenizer_files=files,
    )


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings; the registry reports progress itself."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def init(settings: Settings, source: str, name: str | None = None) -> BaseCheckpoint:
    """Create the registry (schema at head) and register `source` as its frozen base."""
    if database_exists(settings):
        try:
            registry = open_registry(settings)
        except NotInitialised:
            registry = None
        if registry is not None:
            with registry.read() as session:
                if session.query(BaseCheckpoint).first() is not None:
                    raise AlreadyInitialised(f"the registry at {settings.home} already has a base: use another --home to start a new one")
            registry.close()
    checkpoint = load_checkpoint(source)  # every check that can fail runs before anything is written
    return create(settings, source, name or default_name(source), checkpoint)


def create(settings: Settings, source: str, name: str, checkpoint: Checkpoint) -> BaseCheckpoint:
    """Create the registry's database (schema at head) and record an already loaded checkpoint as its base."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.db_url)
    try:
        if db.current_revision(engine) is None:
            db.upgrade(settings.db_url)
            db.enable_wal(engine)
        db.check_schema(engine)
        registry = Registry(settings=settings, engine=engine)
        return register(registry, source, name, checkpoint)
    finally:
        engine.dispose()


def register(registry: Registry, source: str, name: str, checkpoint: Checkpoint) -> BaseCheckpoint:
    """Store the checkpoint's files and record the base in one transaction."""
    tokenizer_blob = json.dumps({k: base64.b64encode(v).decode() for k, v in sorted(checkpoint.tokenizer_files.items())}, sort_keys=True).encode()
    blobs = {"base-weights": checkpoint.weights, "base-config": checkpoint.config_bytes, "tokenizer": tokenizer_blob}
    shas = {kind: registry.store.put(data) for kind, data in blobs.items()}
    with registry.write() as session:
        for kind, sha in shas.items():
            if session.get(Artifact, sha) is None:
                session.add(Artifact(sha256=sha, kind=kind, size=len(blobs[kind])))
        base = BaseCheckpoint(
            name=name,
            source=source,
            model_type=checkpoint.model_type,
            sha256=shas["base-weights"],
            config_sha256=shas["base-config"],
            tokenizer_sha256=shas["tokenizer"],
            config=checkpoint.config,
            parameters=checkpoint.parameters,
        )
        session.add(base)
    return base


def default_name(source: str) -> str:
    """A readable name for a base: the last path component or hub id part."""
    return Path(source.rstrip("/")).name or source


def unpack(registry: Registry, base: Row | BaseCheckpoint) -> Path:
    """A local directory `AutoModel.from_pretrained` can read, unpacked from the store once and reused.

    Every use re-hashes the cached files: weights and config must still be the registry's base, the tokenizer
    files as their manifest recorded. A cached copy that is not is discarded, with one line, and fetched again.
    """
    target = registry.settings.cache_dir / f"base-{base.sha256}"
    problem = cached_base_problem(target, base)
    if problem is None:
        return target
    if target.exists():
        cache.notice(f"cache: the cached base {target} {problem}: discarded, fetching it again from the store")
    staging = target.with_name(f".staging-{uuid.uuid4().hex}")
    try:
        write_base_files(registry.store, base, staging)
        cache.write_manifest(staging)
        if cached_base_problem(target, base) is not None:  # else another process put a good copy there meanwhile
            cache.replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def cached_base_problem(target: Path, base: Row | BaseCheckpoint) -> str | None:
    """What is wrong with the cached base at `target` (None when it is intact)."""
    if not target.exists():
        return "is absent"
    return cache.base_problem(target, base.sha256, base.config_sha256)


def weights_sha256(directory: Path) -> str:
    """The sha256 of the weights in an unpacked base, as hashed when `unpack` last checked them."""
    return json.loads((directory / cache.MANIFEST).read_text())[WEIGHTS_FILE]


def write_base_files(store: Store, base: Row | BaseCheckpoint, target: Path) -> None:
    """Write the base's weights, config and tokenizer files (verified) into `target`; the weights go last."""
    tokenizer_files = json.loads(store.get(base.tokenizer_sha256))
    for filename, encoded in tokenizer_files.items():
        write_atomic(target / filename, base64.b64decode(encoded))
    write_atomic(target / CONFIG_FILE, store.get(base.config_sha256))
    write_atomic(target / WEIGHTS_FILE, store.get(base.sha256))
