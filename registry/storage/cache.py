"""The machine-local cache under REGISTRY_HOME/cache, checked against sha256 every time it is used.

Two kinds of entries:

* `base-<sha256>/`: the base checkpoint unpacked for transformers, with `manifest.json` naming the sha256
  of every file in it (written last, once the files came verified from the store). The weights' and the
  config's hashes must also be the registry's own (`bases.sha256`, `bases.config_sha256`).
* `tokens/encoded-<key digest>-<sha256>.safetensors`: tokenised splits, named by what they encode and by
  the sha256 of their own bytes.

An entry whose bytes differ is discarded with one logged warning and made again (fetched from the store,
or tokenised); `registry verify` checks every entry the same way. Imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import re
import logging
import shutil
from pathlib import Path

from registry.formats import file_digest

MANIFEST = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
log = logging.getLogger("registry")
TOKENS_NAME = re.compile(r"encoded-[0-9a-f]{64}-(?P<sha>[0-9a-f]{64})\.safetensors")


def notice(line: str) -> None:
    """One warning about the cache (the command goes on), logged to `registry` (the CLI shows it on stderr)."""
    log.warning(line)


def base_problem(directory: Path, weights_sha: str, config_sha: str) -> str | None:
    """What is wrong with an unpacked base (None when every file hashes as its manifest says, and the
    weights and config are the registry's); a directory without a manifest is incomplete."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return "is incomplete (no manifest)"
    except ValueError:
        return "has an unreadable manifest"
    if (
        not isinstance(manifest, dict)
        or manifest.get(WEIGHTS_FILE) != weights_sha
        or manifest.get(CONFIG_FILE) != config_sha
    ):
        return "has a manifest that does not name this registry's base weights and config"
    present = {path.name for path in directory.iterdir() if path.name != MANIFEST}
    if present != set(manifest):
        return f"holds files {sorted(present ^ set(manifest))} its manifest does not agree with"
    for name, sha in sorted(manifest.items()):
        if file_digest(directory / name)[0] != sha:
            return f"has a {name} that does not match its sha256 (corrupt or changed)"
    return None


def write_manifest(directory: Path) -> None:
    """Record the sha256 of every file in `directory` (called once they are verified)."""
    manifest = {path.name: file_digest(path)[0] for path in sorted(directory.iterdir()) if path.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def replace_directory(staging: Path, target: Path) -> None:
    """Put the fully written `staging` at `target`, discarding what was there; if another process put its
    own copy there first, keep theirs."""
    if target.exists():
        trash = target.with_name(f".trash-{staging.name}")
        target.rename(trash)
        shutil.rmtree(trash)
    try:
        staging.rename(target)
    except OSError:  # another process won the race: its copy is as good as ours
        shutil.rmtree(staging)


def tokens_problem(path: Path) -> str | None:
    """What is wrong with a tokens cache file: None when its bytes hash to the sha256 in its name."""
    match = TOKENS_NAME.fullmatch(path.name)
    if match is None:
        return "is not a tokens cache file this version writes"
    if file_digest(path)[0] != match["sha"]:
        return "does not match its sha256 (corrupt or changed)"
    return None


def problems(cache_dir: Path, weights_sha: str, config_sha: str) -> list[tuple[Path, str]]:
    """Every cache entry that would be discarded when used: (path, what is wrong with it)."""
    found = []
    for directory in sorted(cache_dir.glob("base-*")):
        if directory.name == f"base-{weights_sha}":
            problem = base_problem(directory, weights_sha, config_sha)
            if problem:
                found.append((directory, problem))
    for path in sorted((cache_dir / "tokens").glob("encoded-*")):
        problem = tokens_problem(path)
        if problem:
            found.append((path, problem))
    return found


def remove(path: Path) -> None:
    """Delete a cache entry (a directory or a file)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
