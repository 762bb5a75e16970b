"""Content-addressed artifacts on any fsspec filesystem: put bytes, get them back verified by sha256."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from registry.errors import ArtifactError


CHUNK = 1 << 20


def sha256_of(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def digest(handle: BinaryIO) -> tuple[str, int]:
    """sha256 and length of everything left in a binary file object, read in chunks."""
    hashed, length = hashlib.sha256(), 0
    while chunk := handle.read(CHUNK):
        hashed.update(chunk)
        length += len(chunk)
    return hashed.hexdigest(), length


class Store:
    """Artifacts at `<root>/<sha[:2]>/<sha>`; a file's name is the sha256 of its bytes."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, sha: str) -> str:
        """Where the artifact `sha` lives in the store."""
        return f"{self.root}/{sha[:2]}/{sha}"

    def put(self, data: bytes) -> str:
        """Store `data` (a no-op when already present) and return its sha256."""
        sha = sha256_of(data)
        final = self.path(sha)
        if self.fs.exists(final):
            return sha
        try:
            if self.local:
                write_atomic(final, data)
            else:
                self.fs.pipe_file(final, data)  # object stores publish a whole object or nothing
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ArtifactError(f"cannot write {exc.filename or final} in the store {self.url}: {reason}: "
                                "make the store writable and give it free space, then run the command again") from exc
        return sha

    def get(self, sha: str) -> bytes:
        """The bytes of artifact `sha`, refused when missing or when they no longer hash to `sha`."""
        try:
            data = self.fs.cat_file(self.path(sha))
        except FileNotFoundError:
            raise ArtifactError(f"artifact {sha[:12]} is missing from the store {self.url}: run `registry verify`") from None
        if sha256_of(data) != sha:
            raise ArtifactError(f"artifact {sha[:12]} in {self.url} does not match its sha256 (corrupt or tampered): run `registry verify`")
        return data

    def exists(self, sha: str) -> bool:
        """Whether a file for `sha` is in the store (not verified)."""
        return self.fs.exists(self.path(sha))

    def all(self) -> Iterator[str]:
        """The sha256 names of every file in the store."""
        if not self.fs.exists(self.root):
            return
        for path in self.fs.find(self.root):
            name = path.rsplit("/", 1)[-1]
            if len(name) == 64:
                yield name

    def delete(self, sha: str) -> None:
        """Remove artifact `sha` from the store."""
        self.fs.rm_file(self.path(sha))


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
