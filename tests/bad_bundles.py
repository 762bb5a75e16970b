"""Bundles an attacker or a broken disk would hand over, built from a good bundle with the manifest re-hashed to match.

`write_bad_bundles(good, target, marker)` writes each variant under `target` and returns their paths by name.
Code planted in a variant writes `marker` when it runs: tests assert it never appears.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

CODE = '''import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    model_type = "bert"


class EvilModel(BertModel):
    config_class = EvilConfig
'''
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def rehash(root: Path, manifest: dict | None = None) -> None:
    """List every file under `root` in its manifest with its sha256 and size, as an attacker would."""
    manifest = manifest or manifest_of(root)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        data = path.read_bytes()
        files[path.relative_to(root).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["files"] = files
    for entry in manifest["tasks"]:
        for key in ("adapter", "config"):
            if entry.get(key) in files:
                entry[f"{key}_sha256"] = files[entry[key]]["sha256"]
    if "base/model.safetensors" in files and manifest["dtype"] == "float32":
        manifest["base"]["sha256"] = files["base/model.safetensors"]["sha256"]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))


def plant_code(directory: Path, marker: Path) -> None:
    """A Python file and a config.json whose auto_map names it: transformers would import it, given the chance."""
    (directory / "evil.py").write_text(CODE.format(marker=str(marker)))
    edit_json(directory / "config.json", lambda config: config.update(auto_map=AUTO_MAP))


def cast_file(path: Path, dtype: torch.dtype) -> None:
    tensors = safetensors.torch.load_file(path)
    safetensors.torch.save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, path)


def write_bad_bundles(good: Path, target: Path, marker: Path) -> dict[str, Path]:
    """Every variant the bad-input table feeds to `import` and `predict --bundle`."""
    variants: dict[str, Callable[[Path], None]] = {}

    def variant(name):
        def register(change):
            variants[name] = change
            return change
        return register

    # --- code in the bundle (issue 14.1): listed, unlisted, auto_map alone, in the tokenizer config, another model type
    @variant("code-listed")
    def _(root):
        plant_code(root / "base", marker)
        rehash(root)

    @variant("code-unlisted")
    def _(root):
        plant_code(root / "base", marker)
        rehash(root)
        manifest = manifest_of(root)
        del manifest["files"]["base/evil.py"]
        (root / "manifest.json").write_text(json.dumps(manifest))

    @variant("auto-map")
    def _(root):
        edit_json(root / "base" / "config.json", lambda config: config.update(auto_map=AUTO_MAP))
        rehash(root)

    @variant("tokenizer-auto-map")
    def _(root):
        edit_json(root / "base" / "tokenizer_config.json",
                  lambda config: config.update(auto_map={"AutoTokenizer": ["evil.T", None]}))
        rehash(root)

    @variant("model-type")
    def _(root):
        edit_json(root / "base" / "config.json", lambda config: config.update(model_type="gpt2"))
        rehash(root)

    # --- imported text (14.3)
    @variant("label-escape")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0]["labels"] = ["\x1b[2J\x1b[31mnegative", "positive"]
        (root / "manifest.json").write_text(json.dumps(manifest))

    @variant("metric-unknown")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0]["metric"] = "bleu"
        (root / "manifest.json").write_text(json.dumps(manifest))

    @variant("labels-for-regression")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0].update(task_type="regression", metric="spearman")
        (root / "manifest.json").write_text(json.dumps(manifest))

    # --- adapters that cannot serve (14.7)
    @variant("adapter-size")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0]["adapter_size"] = 4
        edit_json(root / "adapters" / "sentiment.json", lambda config: config.update(adapter_size=4))
        rehash(root, manifest)

    @variant("label-count")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0]["labels"] = ["negative", "neutral", "positive"]
        edit_json(root / "adapters" / "sentiment.json",
                  lambda config: config.update(labels=["negative", "neutral", "positive"]))
        rehash(root, manifest)

    @variant("config-disagrees")
    def _(root):
        edit_json(root / "adapters" / "sentiment.json", lambda config: config.update(text_columns=["review"]))
        rehash(root)

    @variant("adapter-key")
    def _(root):
        path = root / "adapters" / "sentiment.safetensors"
        tensors = safetensors.torch.load_file(path)
        key = next(k for k in sorted(tensors) if k.endswith(".down_bias"))
        tensors[key.replace("encoder.layer.0", "encoder.layer.9")] = tensors.pop(key)
        safetensors.torch.save_file(tensors, path)
        rehash(root)

    @variant("adapter-float16")
    def _(root):
        cast_file(root / "adapters" / "sentiment.safetensors", torch.float16)
        rehash(root)

    @variant("adapter-nan")
    def _(root):
        path = root / "adapters" / "sentiment.safetensors"
        tensors = safetensors.torch.load_file(path)
        tensors["head.bias"][0] = float("nan")
        safetensors.torch.save_file(tensors, path)
        rehash(root)

    @variant("base-float16")
    def _(root):
        cast_file(root / "base" / "model.safetensors", torch.float16)
        rehash(root)

    # --- garbage files (14.13), each named in the error
    for name, relative, data in (
        ("manifest-not-json", "manifest.json", b"{not json"),
        ("manifest-not-utf8", "manifest.json", b'{"format": "\xe8"}'),
        ("manifest-deep", "manifest.json", b"[" * 100_000 + b"]" * 100_000),
        ("config-not-json", "adapters/sentiment.json", b"{not json"),
        ("config-list", "adapters/sentiment.json", b"[1, 2]"),
        ("config-deep", "adapters/sentiment.json", b"[" * 100_000 + b"]" * 100_000),
        ("adapter-garbage", "adapters/sentiment.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!garbage!"),
        ("base-garbage", "base/model.safetensors", b"\xff" * 64),
        ("base-config-not-json", "base/config.json", b"\xe8\xe8 not json"),
        ("tokenizer-not-json", "base/tokenizer.json", b"{"),
        ("tokenizer-invalid", "base/tokenizer.json", b"{}"),
    ):
        def overwrite(root, relative=relative, data=data):
            (root / relative).write_bytes(data)
            if relative != "manifest.json":
                rehash(root)
        variants[name] = overwrite

    @variant("manifest-types")
    def _(root):
        manifest = manifest_of(root)
        manifest["tasks"][0]["adapter_size"] = "eight"
        (root / "manifest.json").write_text(json.dumps(manifest))

    paths = {}
    for name, change in variants.items():
        root = target / name
        shutil.copytree(good, root)
        change(root)
        paths[name] = root
    paths.update(write_bad_archives(good, target))
    return paths


def write_bad_archives(good: Path, target: Path) -> dict[str, Path]:
    """A .tar.gz bomb (under 1 MiB that expands to 64 MiB); plain tars with a member larger than listed, or unlisted."""
    paths = {}
    bomb = target / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as archive:
        archive.add(good, arcname="bundle")
        info = tarfile.TarInfo("bundle/base/vocab.txt")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    paths["bomb"] = bomb

    big = target / "big-member"
    shutil.copytree(good, big)
    with open(big / "base" / "config.json", "ab") as handle:
        handle.write(b" " * (4 << 20))  # 4 MiB more than the manifest says
    paths["big-member"] = _tar(big, target / "big-member.tar")

    extra = target / "extra-member"
    shutil.copytree(good, extra)
    (extra / "base" / "notes.txt").write_text("not in the manifest\n")
    paths["extra-member"] = _tar(extra, target / "extra-member.tar")
    assert gzip.open(bomb).read(1)  # a real gzip stream
    return paths


def _tar(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        archive.add(root, arcname="bundle")
    return path
