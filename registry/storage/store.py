"""Content-addressed artifacts on any fsspec filesystem: put bytes, get them back verified by sha256."""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from registry.storage.db import first_line
from registry.errors import ArtifactError, StoreUnavailable
from registry.formats import sha256_of

ATTEMPTS = 3  # tries of one store call before giving up (s3fs retries inside each of them as well)
RETRY_PAUSE = 0.5  # seconds before the second try; doubled for each later one
T = TypeVar("T")
# fsspec protocols whose filesystems can be written; http, zip, tar, github and the like cannot.
WRITABLE = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})


SHA_NAME = re.compile(r"[0-9a-f]{64}")


class Store:
    """Artifacts at `<root>/<sha[:2]>/<sha>`; a file's name is the sha256 of its bytes.

    `url` is a directory or any fsspec URL; `s3://bucket/prefix` needs the `s3` extra (s3fs), which takes
    its endpoint and credentials from the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    ...) or fsspec's configuration (`FSSPEC_S3='{"endpoint_url": ...}'`). Every write is read back and
    verified; a call that fails for any reason but a missing or forbidden file is tried `attempts` times.
    """

    def __init__(self, url: str, attempts: int = ATTEMPTS, **storage_options):
        self.url, self.attempts = url, attempts
        self.fs, self.root = filesystem(url, **storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, sha: str) -> str:
        """Where the artifact `sha` lives in the store."""
        return f"{self.root}/{sha[:2]}/{sha}"

    def put(self, data: bytes) -> str:
        """Store `data` and return its sha256, once the stored bytes read back hashing to it.

        A file already there is kept when intact and replaced when not. A directory gets a temporary file
        renamed into place; an object store gets one whole-object PUT (it publishes all of it or nothing).
        """
        sha = sha256_of(data)
        final = self.path(sha)
        if self.intact(sha):
            return sha
        try:
            if self.local:
                write_atomic(final, data)
            else:
                self.call(f"write artifact {sha[:12]}", self.fs.pipe_file, final, data)
        except OSError as exc:  # a read-only or full disk, no such bucket, read-only credentials
            reason = exc.strerror or first_line(exc) or type(exc).__name__
            raise ArtifactError(
                f"cannot write {exc.filename or final} in the store {self.url}: {reason}: check that "
                "the store exists, may be written and has free space, then run the command again"
            ) from exc
        if not self.intact(sha):
            raise ArtifactError(f"artifact {sha[:12]} written to {self.url} reads back different bytes: "
                                "check the store's health, then run the command again")
        return sha

    def get(self, sha: str) -> bytes:
        """The bytes of artifact `sha`, refused when missing or when they no longer hash to `sha`."""
        try:
            data = self.call(f"read artifact {sha[:12]}", self.fs.cat_file, self.path(sha))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # no file, a file where its shard
            # directory should be, or a directory where the file should be
            raise ArtifactError(
                f"artifact {sha[:12]} is missing from the store {self.url}: run `registry verify`"
            ) from None
        if sha256_of(data) != sha:
            raise ArtifactError(
                f"artifact {sha[:12]} in {self.url} does not match its sha256 (corrupt or tampered): run `registry "
                "verify`"
            )
        return data

    def intact(self, sha: str) -> bool:
        """Whether the file for `sha` is there and its bytes hash to `sha`."""
        try:
            self.get(sha)
        except ArtifactError:
            return False
        return True

    def exists(self, sha: str) -> bool:
        """Whether a file for `sha` is in the store (not verified)."""
        return self.call(f"look up artifact {sha[:12]}", self.fs.exists, self.path(sha))

    def files(self) -> list[str]:
        """The path of every file under the store's root (listed afresh, not from a cached listing)."""
        self.fs.invalidate_cache()
        if not self.call("list the store", self.fs.exists, self.root):
            return []
        return sorted(self.call("list the store", self.fs.find, self.root))

    def all(self) -> Iterator[str]:
        """The sha256 names of every artifact file in the store: `<root>/<sha[:2]>/<sha>`, nothing else it holds."""
        for path in self.files():
            if path == self.path(name := path.rsplit("/", 1)[-1]) and SHA_NAME.fullmatch(name):
                yield name

    def delete(self, sha: str) -> None:
        """Remove artifact `sha` from the store."""
        self.remove(self.path(sha))

    def remove(self, path: str) -> None:
        """Remove the file at `path` (a path `files()` returned)."""
        self.call(f"remove {path}", self.fs.rm_file, path)

    def call(self, what: str, function: Callable[..., T], *args) -> T:
        """`function(*args)`, tried up to `attempts` times with a growing pause. A missing or forbidden file
        is an answer and a programming error a bug: both are raised at once."""
        for attempt in itertools.count(1):
            try:
                return function(*args)
            except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    TypeError, AttributeError, NameError):
                raise
            except Exception as exc:  # network, server or throttling errors of any fsspec backend
                if attempt == self.attempts:
                    raise StoreUnavailable(f"the store {self.url} failed to {what} after {attempt} attempts "
                                           f"({type(exc).__name__}: {first_line(exc)}): check that it is reachable, "
                                           "then run the command again") from exc
                time.sleep(RETRY_PAUSE * 2 ** (attempt - 1))


def filesystem(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and root of a store URL, refused unless it is a place artifacts can be written to.

    Read-only or archive filesystems (http, zip, tar, …) cannot hold a store; a local path must be a directory
    (or not exist yet: it is created on the first write).
    """
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol not in WRITABLE:
        raise StoreUnavailable(f"the store {url}: {protocol}:// cannot hold a store: give a directory or one of "
                               f"{', '.join(sorted(p + '://' for p in WRITABLE - {'file', 'local'}))}")
    try:
        # A fresh instance: fsspec's instance cache would keep the endpoint and credentials an earlier store in
        # this process read from the environment (s3fs reads AWS_ENDPOINT_URL when an instance is made).
        fs, root = fsspec.core.url_to_fs(url, **{"skip_instance_cache": True, **storage_options})
    except ImportError as exc:
        raise StoreUnavailable(f"the store {url} needs a package that is not installed ({first_line(exc)}): "
                               "install it (s3://: pip install 'adapter-registry[s3]')") from None
    except (ValueError, OSError) as exc:
        raise StoreUnavailable(f"cannot use the store {url} ({first_line(exc)}): give a directory or an "
                               "s3://BUCKET/PREFIX URL") from None
    if isinstance(fs, LocalFileSystem) and os.path.exists(root) and not os.path.isdir(root):
        raise StoreUnavailable(f"the store {url} is not a directory: give a directory for the artifacts")
    return fs, root


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, then rename over `path`."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
