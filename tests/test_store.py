"""The content-addressed store: the same tests on a real directory and on a real S3-protocol server (moto, loopback)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from registry.errors import ArtifactError, StoreUnavailable
from registry.storage.store import Store
from tests.servers import Relay


@pytest.fixture
def store(store_url) -> Store:
    return Store(store_url)


def test_put_get_round_trip(store):
    sha = store.put(b"weights")
    assert sha == hashlib.sha256(b"weights").hexdigest()
    assert store.get(sha) == b"weights"
    assert store.fs.cat_file(f"{store.root}/{sha[:2]}/{sha}") == b"weights"
    assert list(store.all()) == [sha]
    assert store.files() == [store.path(sha)]  # no temporary file left behind


def test_put_is_idempotent(store):
    assert store.put(b"x") == store.put(b"x")
    assert len(list(store.all())) == 1


def test_tampered_artifact_is_refused(store):
    sha = store.put(b"weights")
    store.fs.pipe_file(store.path(sha), b"weightz")
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        store.get(sha)
    assert not store.intact(sha)


def test_put_replaces_a_corrupt_file(store):
    sha = store.put(b"weights")
    store.fs.pipe_file(store.path(sha), b"weig")  # a truncated, half-written object under the right name
    assert store.put(b"weights") == sha
    assert store.get(sha) == b"weights"


def test_missing_artifact_is_refused(store):
    with pytest.raises(ArtifactError, match="is missing from the store"):
        store.get("ab" * 32)


def test_delete(store):
    sha = store.put(b"remote bytes")
    store.delete(sha)
    assert not store.exists(sha)
    assert list(store.all()) == []


def test_empty_store_lists_nothing(store):
    assert store.files() == [] and list(store.all()) == []


def test_fsspec_memory_store():
    store = Store("memory://registry-test-store")
    sha = store.put(b"remote bytes")
    assert store.get(sha) == b"remote bytes"
    store.delete(sha)
    assert not store.exists(sha)


def test_s3_missing_bucket_is_one_clear_error(s3_server):
    store = Store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/artifacts")
    with pytest.raises(
        ArtifactError,
        match=r"cannot write .* in the store s3://no-such-bucket-\w+/artifacts: .*check that the store exists",
    ):
        store.put(b"x")


def flaky_store(s3_server, refuse: int, attempts: int = 3) -> tuple[Store, Relay, str]:
    """A store reaching the S3 server through a relay that resets its first `refuse` connections;
    s3fs's and botocore's own retries are off, so every reset reaches the store's bounded retry."""
    bucket = f"registry-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(bucket)
    relay = Relay("127.0.0.1", (s3_server.host, s3_server.port), refuse=refuse)
    store = Store(f"s3://{bucket}/artifacts", attempts=attempts, endpoint_url=f"http://127.0.0.1:{relay.port}",
                  config_kwargs={"retries": {"max_attempts": 1}}, skip_instance_cache=True)
    store.fs.retries = 1
    return store, relay, bucket


def test_s3_transient_errors_are_retried(s3_server, monkeypatch):
    monkeypatch.setattr("registry.storage.store.RETRY_PAUSE", 0.01)
    store, relay, _ = flaky_store(s3_server, refuse=2)
    try:
        sha = store.put(b"weights")
        assert relay.refused == 2
        assert store.get(sha) == b"weights"
    finally:
        relay.close()


def test_s3_persistent_errors_give_up_after_bounded_attempts_and_write_nothing(s3_server, monkeypatch):
    monkeypatch.setattr("registry.storage.store.RETRY_PAUSE", 0.01)
    store, relay, bucket = flaky_store(s3_server, refuse=1000)
    try:
        with pytest.raises(
            StoreUnavailable,
            match=r"^the store s3://\S+ failed to .* after 3 attempts \(.*\): check that it is reachable",
        ) as error:
            store.put(b"weights")
        assert "\n" not in str(error.value)
        # 3 attempts of ours; within one, botocore's own retries (legacy mode: at most 5 tries of a request)
        # reconnect as often as its timing allows, so the bound is theirs times ours
        assert 3 <= relay.refused <= 3 * 5
    finally:
        relay.close()
    assert Store(f"s3://{bucket}/artifacts").files() == []
