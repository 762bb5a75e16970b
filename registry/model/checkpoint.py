"""The frozen base: load a checkpoint with transformers, register it once, unpack it for training."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Row, select, text
from sqlalchemy.exc import IntegrityError

from registry.model import probe
from registry.model.adapters import ARCHITECTURES
from registry.storage import cache, db, fields, ownership
from registry.storage.config import Settings
from registry.storage.core import Opened, database_exists, open_registry
from registry.storage.creation import new_database, rolled_back
from registry.errors import AlreadyInitialised, BaseModelError, NotInitialised
from registry.formats import sha256_of
from registry.storage.models import Artifact, BaseCheckpoint
from registry.storage.store import Store, write_atomic

log = logging.getLogger("registry")

WEIGHTS_FILE, CONFIG_FILE = cache.WEIGHTS_FILE, cache.CONFIG_FILE
BASE_ID = 1  # the one row of `bases` (see register)


@dataclass(frozen=True)
class Checkpoint:
    """A base checkpoint as the files `save_pretrained` writes."""

    model_type: str
    parameters: int
    config: dict
    weights: bytes
    config_bytes: bytes
    tokenizer_files: dict[str, bytes]
    converted_from: str | None = None  # the dtype the checkpoint was saved in, when it was not float32


def load_checkpoint(source: str) -> Checkpoint:
    """Load `source` (a directory or hub id) with transformers and serialise it in float32; refuse unsupported models.

    Its config and tokenizer config are read as JSON and checked (`check_config`) before transformers
    loads anything, so a checkpoint that ships its own code is refused without running it.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer, PretrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    quiet_transformers()
    try:
        config, _ = PretrainedConfig.get_config_dict(source)
        tokenizer_config = get_tokenizer_config(source)
    except (OSError, ValueError) as exc:
        raise cannot_load(source, exc) from exc
    check_config(config, f"base {source!r}")
    check_no_code(tokenizer_config, f"base {source!r}: tokenizer_config.json")
    refuse_pickles(source)
    try:  # use_safetensors: never unpickle, not even with torch's restricted unpickler
        model, info = AutoModel.from_pretrained(source, trust_remote_code=False, use_safetensors=True,
                                                output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:  # transformers and tokenizers raise anything, even a bare Exception, on a bad file
        raise cannot_load(source, exc) from exc
    probe.check_loading(info, f"base {source!r}")  # no weight filled at random, none dropped
    probe.check_tokenizer(tokenizer, f"base {source!r}")
    stored_as = model.dtype
    if stored_as != torch.float32:  # adapters train in float32 next to the base; a half-precision base makes NaN losses
        model = model.float()
        model.config.dtype = torch.float32
    probe.check_encoder(model.eval(), tokenizer, f"base {source!r}")  # finite outputs, in float32 as stored
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    if WEIGHTS_FILE not in files:
        raise BaseModelError(
            f"base {source!r} saved as several weight shards; only single-file checkpoints are supported"
        )
    weights = files.pop(WEIGHTS_FILE)
    config_bytes = files.pop(CONFIG_FILE)
    return Checkpoint(
        model_type=model.config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        config=json.loads(config_bytes),
        weights=weights,
        config_bytes=config_bytes,
        tokenizer_files=files,
        converted_from=None if stored_as == torch.float32 else str(stored_as).removeprefix("torch."),
    )


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
CONVERT = ("convert it where you trust it: python -c \"from transformers import AutoModel; "
           "AutoModel.from_pretrained('DIR').save_pretrained('DIR-safe', safe_serialization=True)\" "
           "(and copy the tokenizer files), then pass DIR-safe")


def refuse_pickles(source: str) -> None:
    """Refuse a local checkpoint whose weights are only pickled (pytorch_model.bin and the like): never unpickle."""
    folder = Path(source)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(path.name for pattern in PICKLED for path in folder.glob(pattern))
    if pickled:
        raise BaseModelError(f"base {source!r} has its weights only as pickles ({', '.join(pickled)}), which the "
                             f"registry never loads: {CONVERT}")


def cannot_load(source: str, exc: BaseException) -> BaseModelError:
    """The error for a checkpoint transformers cannot load."""
    return BaseModelError(f"cannot load base checkpoint {source!r}: {type(exc).__name__}: {db.first_line(exc)}; "
                          "pass a directory with config.json and weights, or a hub id")


def check_config(config: object, where: str) -> None:
    """Refuse a model config that is not a JSON object, ships its own code, or names an unsupported model type."""
    if not isinstance(config, dict):
        raise BaseModelError(f"{where}: config.json is not a JSON object: "
                             "pass a checkpoint written by `save_pretrained`")
    check_no_code(config, f"{where}: config.json")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise BaseModelError(f"{where} is a {model_type!r} model; supported: {', '.join(sorted(ARCHITECTURES))}")


def check_no_code(config: object, where: str) -> None:
    """Refuse a config (model or tokenizer) whose `auto_map` would have transformers import code shipped with it."""
    if isinstance(config, dict) and "auto_map" in config:
        raise BaseModelError(f"{where} names code to run (auto_map): the registry never runs code from a checkpoint; "
                             "use a checkpoint of a supported type without custom code")


def max_positions(config: dict) -> int:
    """How many tokens the base reads at most: its position embeddings (RoBERTa's first two are reserved)."""
    positions = int(config.get("max_position_embeddings", 512))
    return positions - 2 if config.get("model_type") in ("roberta", "xlm-roberta") else positions


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings; the registry reports progress itself."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def init(settings: Settings, source: str, name: str | None = None) -> BaseCheckpoint:
    """Create the registry (schema at head) and register `source` as its frozen base (in float32, said in one line)."""
    name = name or default_name(source)
    for value, what, hint in ((source, "base source", "move or rename the checkpoint"),
                              (name, "base name", "pass another --name")):
        if problem := fields.problem(value, what):
            raise BaseModelError(f"{problem}: {hint}")
    if has_base(settings):
        raise AlreadyInitialised(
            f"the registry at {settings.home} already has a base: use another --home to start a new one"
        )
    checkpoint = load_checkpoint(source)  # every check that can fail runs before anything is written
    if checkpoint.converted_from:
        log.info(f"base {source} is saved in {checkpoint.converted_from}: stored as float32, "
                 "which adapters train against")
    registry_id = ownership.new_registry_id()
    with rolled_back(settings, registry_id):  # another init that won keeps its registry (register removed our files)
        return create(settings, source, name, checkpoint, registry_id)


def has_base(settings: Settings) -> bool:
    """Whether a registry with a base is at `settings` already."""
    if not database_exists(settings):
        return False
    try:
        registry = open_registry(settings)
    except NotInitialised:
        return False
    try:
        with registry.read() as session:
            return session.query(BaseCheckpoint).first() is not None
    finally:
        registry.close()


def create(settings: Settings, source: str, name: str, checkpoint: Checkpoint, registry_id: str) -> BaseCheckpoint:
    """Claim the store (registry.storage.ownership), create the registry's database (schema at head) and record an
    already loaded checkpoint as its base."""
    store = Store(settings.store_url)
    try:
        ownership.check_claim(settings, store)
    except ownership.StoreNotOwned:
        if has_base(settings):  # another init won the race and marked the store: the registry is theirs
            raise AlreadyInitialised(f"the registry at {settings.home} already has a base (another `init` won): "
                                     "use another --home to start a new one") from None
        raise
    with new_database(settings) as registry:
        base = register(registry, source, name, checkpoint, registry_id)
    ownership.write_marker(store, registry_id)
    return base


def register(registry: Opened, source: str, name: str, checkpoint: Checkpoint, registry_id: str) -> BaseCheckpoint:
    """Store the checkpoint's files and record the base in one transaction; AlreadyInitialised if another base won."""
    tokenizer_blob = json.dumps(
        {k: base64.b64encode(v).decode() for k, v in sorted(checkpoint.tokenizer_files.items())}, sort_keys=True
    ).encode()
    blobs = {"base-weights": checkpoint.weights, "base-config": checkpoint.config_bytes, "tokenizer": tokenizer_blob}
    new = {sha256_of(data) for data in blobs.values() if not registry.store.exists(sha256_of(data))}
    shas = {kind: registry.store.put(data) for kind, data in blobs.items()}
    try:
        with registry.write() as session:
            for kind, sha in shas.items():
                if session.get(Artifact, sha) is None:
                    session.add(Artifact(sha256=sha, kind=kind, size=len(blobs[kind])))
            # A registry has one base and it is row BASE_ID: two `init`s racing on a new home both insert that
            # id and the primary key lets exactly one commit (no check-then-insert can do that). Every base is
            # inserted here with this id; PostgreSQL's id sequence is still moved past it, for any later insert.
            base = BaseCheckpoint(
                id=BASE_ID,
                name=name,
                source=source,
                model_type=checkpoint.model_type,
                sha256=shas["base-weights"],
                config_sha256=shas["base-config"],
                tokenizer_sha256=shas["tokenizer"],
                config=checkpoint.config,
                parameters=checkpoint.parameters,
                registry_id=registry_id,
            )
            session.add(base)
            session.flush()
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("SELECT setval(pg_get_serial_sequence('bases', 'id'), :id)"), {"id": BASE_ID})
    except IntegrityError:
        with registry.read() as session:
            known = set(session.scalars(select(Artifact.sha256).where(Artifact.sha256.in_(new))))
        for sha in new - known:  # ours alone: the winner's rows do not name them
            registry.store.delete(sha)
        raise AlreadyInitialised(f"the registry at {registry.settings.home} already has a base (another `init` won): "
                                 "use another --home to start a new one") from None
    return base


def default_name(source: str) -> str:
    """A readable name for a base: the last path component or hub id part."""
    return Path(source.rstrip("/")).name or source


def unpack(registry: Opened, base: Row | BaseCheckpoint) -> Path:
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
