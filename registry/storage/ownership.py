"""What the registry owns in its artifact store, and so what it may ever delete there.

`init` (and an `import` that starts a registry) claims its store: it writes a marker object,
`registry-store.json`, naming a registry id that the database records too (`bases.registry_id`). A store
that holds anything else, or another registry's marker, is refused; so is a store that holds the
registry's home or database (a prune would see them as stray files). Two registries never share a store.

Deleting in the store (`verify --prune`, a failed init's clean-up) touches only names of the store's own
layout — `<xx>/<sha256>` with `xx` the sha's first two characters, and the temporary `<xx>/.tmp-<hex>` files
a directory store writes — and only in a store whose marker names this registry. A registry made before
markers (schema 0003 or older) is adopted by its first `verify --prune` when its store holds nothing but
files of that layout; otherwise prune refuses and removes nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from sqlalchemy import select

from registry.errors import RegistryError
from registry.storage import db, schema
from registry.storage.config import Settings
from registry.storage.store import Store

MARKER = "registry-store.json"
MARKER_FORMAT = "adapter-registry/store@1"
SHARD = re.compile(r"(?P<shard>[0-9a-f]{2})/(?:(?P<sha>[0-9a-f]{64})|\.tmp-[0-9a-f]+)")


class StoreNotOwned(RegistryError):
    """The store is not this registry's own (another's, foreign files, or it holds the home or database)."""


def new_registry_id() -> str:
    """A fresh registry id (recorded in the database and in the store's marker)."""
    return uuid.uuid4().hex


def relative(store: Store, path: str) -> str:
    """`path` (as `store.files()` lists it) relative to the store's root."""
    return path[len(store.root.rstrip("/")) + 1:] if path.startswith(store.root.rstrip("/") + "/") else path


def of_layout(store: Store, path: str) -> bool:
    """Whether `path` is a name the registry writes in its store: a sha256 shard file or its temporary file."""
    match = SHARD.fullmatch(relative(store, path))
    return match is not None and (match["sha"] is None or match["sha"].startswith(match["shard"]))


def layout_sha(store: Store, path: str) -> str | None:
    """The sha256 a store path names when it is an artifact file of the layout, else None."""
    match = SHARD.fullmatch(relative(store, path))
    return match["sha"] if match and match["sha"] and match["sha"].startswith(match["shard"]) else None


def foreign(store: Store) -> list[str]:
    """Files in the store the registry would never write (its marker and layout excepted)."""
    return [path for path in store.files() if relative(store, path) != MARKER and not of_layout(store, path)]


def read_marker(store: Store) -> str | None:
    """The registry id the store's marker names, or None when it has none."""
    try:
        raw = store.call("read the store marker", store.fs.cat_file, f"{store.root}/{MARKER}")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        marker = json.loads(raw)
        assert marker["format"] == MARKER_FORMAT and isinstance(marker["registry_id"], str)
    except (ValueError, TypeError, KeyError, AssertionError):
        raise StoreNotOwned(f"{store.url}/{MARKER} is not a registry store marker: the store is not a registry's; "
                            "use another --store") from None
    return marker["registry_id"]


def write_marker(store: Store, registry_id: str) -> None:
    """Write the marker naming `registry_id` at the store's root."""
    data = json.dumps({"format": MARKER_FORMAT, "registry_id": registry_id}, sort_keys=True).encode()
    if store.local:
        store.fs.makedirs(store.root, exist_ok=True)
    store.call("write the store marker", store.fs.pipe_file, f"{store.root}/{MARKER}", data)


def remove_marker(store: Store, registry_id: str) -> None:
    """Remove the marker, when it names `registry_id` (a failed init's clean-up)."""
    if read_marker(store) == registry_id:
        store.remove(f"{store.root}/{MARKER}")


def check_places(settings: Settings, store: Store) -> None:
    """Refuse a directory store that is or holds the registry's home or SQLite database, or lies in its cache."""
    if not store.local:
        return
    root = Path(store.root).resolve()
    places = {"home": settings.home, "database": db.sqlite_path(settings.db_url)}
    for what, place in places.items():
        if place is not None and (root == Path(place).resolve() or root in Path(place).resolve().parents):
            raise StoreNotOwned(f"the store {store.url} holds the registry's {what} {place}: the store holds only "
                                "artifacts; use another --store (the default is HOME/artifacts)")
    cache_dir = settings.cache_dir.resolve()
    if root == cache_dir or cache_dir in root.parents:
        raise StoreNotOwned(f"the store {store.url} lies in the registry's cache {cache_dir}: use another --store")


def check_claim(settings: Settings, store: Store) -> None:
    """Refuse, at init, a store that is another registry's or holds anything but a registry's files (then `init`
    writes the marker, once its base row is committed: of two racing inits, only the winner marks the store)."""
    check_places(settings, store)
    owner = read_marker(store)
    if owner is not None:
        raise StoreNotOwned(f"the store {store.url} belongs to another registry ({owner[:12]}; {MARKER}): "
                            "two registries never share a store; use another --store")
    files = store.files()
    if files:
        raise StoreNotOwned(f"the store {store.url} is not empty and no registry's (it holds {files[0]}): "
                            "use an empty or new --store")


def ensure_owned(registry) -> None:
    """Refuse to delete in a store whose marker does not name this registry; adopt a pre-marker registry's store
    when it holds only files of the store's layout."""
    store = registry.store
    check_places(registry.settings, store)
    with registry.engine.begin() as connection:
        recorded = connection.execute(select(schema.bases.c.registry_id)).scalar()
    owner = read_marker(store)
    if recorded is not None and owner == recorded:
        return
    if recorded is not None or owner is not None:
        whose = f"names registry {owner[:12]}" if owner else "is missing"
        raise StoreNotOwned(f"the store {store.url} is not this registry's (its {MARKER} {whose}, this registry is "
                            f"{(recorded or '(unmarked)')[:12]}): nothing removed; check --store")
    strays = foreign(store)
    if strays:
        raise StoreNotOwned(f"the store {store.url} holds files the registry never writes ({strays[0]}"
                            f"{f' and {len(strays) - 1} more' if len(strays) > 1 else ''}) and no {MARKER}: nothing "
                            "removed; move them out of the store, then run `registry verify --prune` to adopt it")
    adopt(registry, store)


def adopt(registry, store: Store) -> None:
    """Mark a pre-marker registry's store (holding only files of its layout) as its own."""
    registry_id = new_registry_id()
    write_marker(store, registry_id)
    with registry.engine.begin() as connection:
        connection.execute(schema.bases.update().values(registry_id=registry_id))
