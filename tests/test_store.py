"""The content-addressed store on a real directory."""

from __future__ import annotations

import hashlib

import pytest

from registry.errors import ArtifactError
from registry.store import Store


def test_put_get_round_trip(tmp_path):
    store = Store(str(tmp_path / "artifacts"))
    sha = store.put(b"weights")
    assert sha == hashlib.sha256(b"weights").hexdigest()
    assert store.get(sha) == b"weights"
    assert (tmp_path / "artifacts" / sha[:2] / sha).read_bytes() == b"weights"
    assert list(store.all()) == [sha]
    assert not [p for p in (tmp_path / "artifacts").rglob(".tmp-*")]


def test_put_is_idempotent(tmp_path):
    store = Store(str(tmp_path))
    assert store.put(b"x") == store.put(b"x")
    assert len(list(store.all())) == 1


def test_tampered_artifact_is_refused(tmp_path):
    store = Store(str(tmp_path))
    sha = store.put(b"weights")
    (tmp_path / sha[:2] / sha).write_bytes(b"weightz")
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        store.get(sha)


def test_missing_artifact_is_refused(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(ArtifactError, match="is missing from the store"):
        store.get("ab" * 32)


def test_fsspec_memory_store():
    store = Store("memory://registry-test-store")
    sha = store.put(b"remote bytes")
    assert store.get(sha) == b"remote bytes"
    store.delete(sha)
    assert not store.exists(sha)
