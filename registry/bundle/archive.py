"""Reading a bundle .tar safely: the security boundary between an archive from anywhere and the disk.

Nothing is extracted before every member has been checked against the bundle's manifest: only regular files the
manifest lists, each once and of the size it lists, under one top directory; no compression (nothing expands
beyond the file), and tarfile's "data" filter on top (no links, devices, absolute paths or `..`).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from registry.bundle.manifest import MANIFEST, MANIFEST_LIMIT, parse_manifest
from registry.errors import BundleError, printable


@contextmanager
def opened(path: str | os.PathLike) -> Iterator[Path]:
    """The bundle's root directory: `path` itself, or a plain .tar's members that its manifest lists, extracted."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file() or not tarfile.is_tarfile(path):
        raise BundleError(f"{path} is not a bundle: pass a directory or .tar written by `registry export`")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        yield _extract(path, Path(tmp))


def _extract(path: Path, target: Path) -> Path:
    """Extract into `target` the members of the plain tar at `path` that its manifest lists, each no larger than listed.

    Nothing is extracted before every member has been checked against the manifest (_listed_members).
    """
    try:
        with tarfile.open(path, mode="r:") as archive:  # "r:" reads no compression: nothing expands beyond the file
            top, members = _listed_members(archive, path)
            archive.extractall(target, members=members, filter="data")
    except tarfile.ReadError:
        raise BundleError(f"{path} is a compressed or damaged tar: "
                          "pass the plain .tar `registry export --archive` writes") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"cannot unpack {path} ({exc}): export the bundle again") from None
    return target / top


def _listed_members(archive: tarfile.TarFile, path: Path) -> tuple[PurePosixPath, list[tarfile.TarInfo]]:
    """The bundle's top directory in the tar and its file members.

    Refused unless each is a regular file its manifest lists, of the size it lists.
    """
    members = archive.getmembers()
    manifests = [m for m in members if PurePosixPath(m.name).name == MANIFEST and len(PurePosixPath(m.name).parts) <= 2]
    if len(manifests) != 1:
        raise BundleError(f"{path} is not a bundle (no single {MANIFEST} at its top): "
                          "pass a .tar written by `registry export --archive`")
    top = PurePosixPath(manifests[0].name).parent
    if not manifests[0].isfile() or manifests[0].size > MANIFEST_LIMIT:
        raise BundleError(f"{path}: {MANIFEST} is not a regular file under {MANIFEST_LIMIT >> 20} MiB: "
                          "export the bundle again")
    manifest = parse_manifest(archive.extractfile(manifests[0]).read(), path)
    wanted, seen = [], set()
    for member in members:
        name = PurePosixPath(member.name)
        if member.isdir() and (name == top or top in name.parents):
            continue
        relative = name.relative_to(top).as_posix() if top in name.parents else member.name
        listed = manifest["files"].get(relative) if relative != MANIFEST else {"size": member.size}
        if listed is None or relative in seen:
            raise BundleError(f"{path} holds {printable(member.name)}, which {MANIFEST} does not list (once): "
                              "export the bundle again")
        if not member.isfile() or member.issparse():
            raise BundleError(f"{path}: {printable(member.name)} is not a regular file: export the bundle again")
        if member.size != listed["size"]:
            raise BundleError(f"{path}: {printable(member.name)} is {member.size} bytes, {MANIFEST} says "
                              f"{listed['size']}: export the bundle again")
        seen.add(relative)
        wanted.append(member)
    return top, wanted

