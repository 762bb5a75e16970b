"""Tokenise a loaded split once (cached as safetensors) and cut it into padded batches."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.formats import sha256_of
from registry.storage import cache
from registry.storage.store import write_atomic

if TYPE_CHECKING:  # imported lazily at run time: `pyarrow` and `torch` are slow to import
    import pyarrow as pa
    import torch

__all__ = [
    "Encoded",
    "encode",
    "tokenise",
    "batches",
]


@dataclass(frozen=True, eq=False)
class Encoded:
    """Token ids per example (no padding) and the labels, in the split's row order.

    ``token_type_ids`` is set only for sentence pairs when the tokenizer's model takes segment ids
    (BERT does; RoBERTa and DistilBERT do not); it is None otherwise.
    """

    input_ids: list[np.ndarray]
    labels: np.ndarray
    token_type_ids: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, keep: np.ndarray) -> Encoded:
        """The rows `keep`, in that order."""
        types = self.token_type_ids
        return Encoded(input_ids=[self.input_ids[i] for i in keep], labels=self.labels[keep],
                       token_type_ids=[types[i] for i in keep] if types is not None else None)


# --------------------------------------------------------------------------------------------
# tokenising and its cache

_CACHE_FORMAT = "adapter-registry-encoded/1"
_ENCODE_CHUNK = 2048


def _column_list(split: pa.Table, column: str) -> list:
    return split.column(column).to_pylist()


def _label_array(split: pa.Table, column: str) -> np.ndarray:
    arr = split.column(column).to_numpy()
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)


def _content_digest(texts: Sequence[list], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for col in texts:
        h.update(np.fromiter(map(len, col), dtype=np.int64, count=len(col)).tobytes())
        h.update("\x00".join(col).encode("utf-8", "surrogatepass"))
    h.update(str(labels.dtype).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def _split_flat(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, offsets[1:-1]) if offsets.size > 1 else []


def _from_flat(ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray, types: np.ndarray | None) -> Encoded:
    return Encoded(
        input_ids=_split_flat(ids, offsets),
        labels=labels,
        token_type_ids=None if types is None else _split_flat(types.astype(np.int64), offsets),
    )


def _read_cache(path: Path, n: int) -> Encoded | None:
    from safetensors.numpy import load_file

    try:
        t = load_file(str(path))
        ids, offsets, labels = t["input_ids"], t["offsets"], t["labels"]
    except Exception:  # damaged or foreign file: tokenise again and replace it
        return None
    if offsets.shape != (n + 1,) or labels.shape != (n,) or int(offsets[-1]) != ids.size or ids.dtype != np.int32:
        return None
    types = t.get("token_type_ids")
    if types is not None and types.shape != ids.shape:
        return None
    return _from_flat(ids, offsets, labels, types)


def _write_cache(prefix: Path, tensors: dict[str, np.ndarray], cache_key: str) -> None:
    """Write the file as `<prefix>-<sha256 of its bytes>.safetensors`, so every later use can check it."""
    from safetensors.numpy import save

    data = save(tensors, metadata={"format": _CACHE_FORMAT, "cache_key": cache_key})
    write_atomic(prefix.with_name(f"{prefix.name}-{sha256_of(data)}.safetensors"), data)


def _cached(prefix: Path, n: int) -> Encoded | None:
    """The cached split under `prefix`, from a file whose bytes still hash to its name; others are discarded."""
    for path in sorted(prefix.parent.glob(f"{prefix.name}-*.safetensors")):
        problem = cache.tokens_problem(path)
        hit = None if problem else _read_cache(path, n)
        if hit is not None:
            return hit
        cache.notice(f"cache: the tokenised split {path} {problem or 'is unreadable'}: discarded, tokenising again")
        path.unlink(missing_ok=True)
    return None


def uses_segments(tokenizer: Any, pair: bool) -> bool:
    """Whether texts get segment ids: pairs, when the tokenizer's model takes them (BERT does; RoBERTa does not)."""
    return pair and "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def tokenise(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, *,
             max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of texts (with their pairs), truncated to ``max_length``, and segment ids when ``uses_segments``.

    The one tokenising rule: training data (``encode``) and prediction both go through it.
    """
    want_types = uses_segments(tokenizer, pairs is not None)
    out = tokenizer(list(texts), None if pairs is None else list(pairs), truncation=True, max_length=int(max_length),
                    return_attention_mask=False, return_token_type_ids=want_types)
    return out["input_ids"], out["token_type_ids"] if want_types else None


def encode(
    split: pa.Table,
    text_columns: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int,
    cache_dir: Path | None,
    cache_key: str,
    progress: bool = False,
) -> Encoded:
    """Tokenise a split (pairs as pairs, truncated to ``max_length``), caching the result.

    ``split`` holds ``text_columns`` and one label column (as :func:`registry.data.splits.load` returns it).
    With a ``cache_dir`` the result is one safetensors file (flat int32 ids, int64 offsets, labels),
    named by sha256 of ``cache_key`` plus a digest of the split's texts and labels, then by the sha256
    of its own bytes; written to a temporary name and renamed into place, and re-hashed on every hit
    (a file that no longer matches is discarded with one line on stderr). A cache hit never touches
    ``tokenizer`` (it may be None).
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"encode takes one or two text columns, got {len(text_columns)}")
    if int(max_length) < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    others = [c for c in split.column_names if c not in text_columns]
    if len(others) != 1:
        raise ValueError(f"the split must hold the text columns and one label column; it has {split.column_names}")
    texts = [_column_list(split, c) for c in text_columns]
    labels = _label_array(split, others[0])
    n = len(labels)

    path = None
    if cache_dir is not None:
        digest = sha256_of(f"{cache_key}\n{_content_digest(texts, labels)}".encode())
        path = Path(cache_dir) / f"encoded-{digest}"
        hit = _cached(path, n)
        if hit is not None:
            return hit
    if tokenizer is None:
        raise ValueError("encode needs a tokenizer: the split is not in the cache")

    ids_rows, type_rows = _tokenise_in_chunks(tokenizer, texts, max_length=max_length, progress=progress)
    tensors = _flat_tensors(ids_rows, type_rows, labels)
    if path is not None:
        _write_cache(path, tensors, cache_key)
    return _from_flat(tensors["input_ids"], tensors["offsets"], labels, tensors.get("token_type_ids"))


def _tokenise_in_chunks(tokenizer: Any, texts: list[list[str]], *, max_length: int,
                        progress: bool) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of every row (pairs when there are two text columns), and segment ids when the tokenizer uses them."""
    n = len(texts[0])
    pair = len(texts) == 2
    want_types = uses_segments(tokenizer, pair)
    ids_rows: list[list[int]] = []
    type_rows: list[list[int]] = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc="tokenising", unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, n, _ENCODE_CHUNK):
            a = texts[0][start:start + _ENCODE_CHUNK]
            b = texts[1][start:start + _ENCODE_CHUNK] if pair else None
            ids, types = tokenise(tokenizer, a, b, max_length=max_length)
            ids_rows.extend(ids)
            if want_types:
                type_rows.extend(types)
            bar.update(len(a))
    return ids_rows, type_rows if want_types else None


def _flat_tensors(ids_rows: list[list[int]], type_rows: list[list[int]] | None,
                  labels: np.ndarray) -> dict[str, np.ndarray]:
    """The cache file's tensors: flat int32 ids, int64 offsets, the labels, and flat uint8 segment ids if any."""
    n = len(ids_rows)
    lengths = np.fromiter(map(len, ids_rows), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.fromiter(itertools.chain.from_iterable(ids_rows), dtype=np.int32, count=total)
    tensors = {"input_ids": flat, "offsets": offsets, "labels": labels}
    if type_rows is not None:
        tensors["token_type_ids"] = np.fromiter(itertools.chain.from_iterable(type_rows), dtype=np.uint8, count=total)
    return tensors


# --------------------------------------------------------------------------------------------
# batching


def batches(
    encoded: Encoded,
    batch_size: int,
    *,
    pad_id: int,
    shuffle: bool,
    seed: int,
    max_tokens: int | None = None,
    pass_cost: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches: ``input_ids`` and ``attention_mask`` (long, padded to the batch's
    longest row with ``pad_id``), ``labels`` (long or float), ``index`` (long: the rows' positions in
    ``encoded``) and, for pairs whose tokenizer uses them, ``token_type_ids`` (long).

    With ``shuffle``: a seeded permutation, cut into windows of 50 batches, each window sorted by
    length and cut into batches, then the batches in a seeded random order. Without: rows sorted by
    length (stable), so padding is small; use ``index`` to put predictions back in row order.
    With ``max_tokens`` (without shuffle), the sorted rows are cut where it saves padding (see
    ``_least_padding``, with ``pass_cost``, default PASS_COST_TOKENS) and so that no batch's padded size
    (rows x longest row) passes it.
    Every row appears exactly once.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batch_size = int(batch_size)
    n = len(encoded.input_ids)
    lengths = np.fromiter((x.size for x in encoded.input_ids), dtype=np.int64, count=n)
    plan = _batch_plan(lengths, batch_size, shuffle=shuffle, seed=seed, max_tokens=max_tokens,
                       pass_cost=PASS_COST_TOKENS if pass_cost is None else int(pass_cost))
    for idx in plan:
        yield _padded(encoded, idx, lengths, pad_id)


def _batch_plan(lengths: np.ndarray, batch_size: int, *, shuffle: bool, seed: int, max_tokens: int | None,
                pass_cost: int) -> list[np.ndarray]:
    """The rows of each batch, in order (see ``batches``)."""
    n = lengths.size
    if shuffle:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        window = batch_size * 50
        groups: list[np.ndarray] = []
        for w in range(0, n, window):
            chunk = perm[w:w + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups.extend(chunk[i:i + batch_size] for i in range(0, chunk.size, batch_size))
        order = rng.permutation(len(groups))
        plan = [groups[i] for i in order]
    else:
        srt = np.argsort(lengths, kind="stable")
        if max_tokens is None:
            plan = [srt[i:i + batch_size] for i in range(0, n, batch_size)]
        else:
            plan = _least_padding(srt, lengths, batch_size, int(max_tokens), pass_cost)
    return plan


def _padded(encoded: Encoded, idx: np.ndarray, lengths: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of the rows ``idx``, padded to its longest row (see ``batches``)."""
    import torch

    types = encoded.token_type_ids
    width = int(lengths[idx].max()) if idx.size else 0
    ids = np.full((idx.size, width), pad_id, dtype=np.int64)
    mask = np.zeros((idx.size, width), dtype=np.int64)
    tt = np.zeros((idx.size, width), dtype=np.int64) if types is not None else None
    for r, i in enumerate(idx):
        L = lengths[i]
        ids[r, :L] = encoded.input_ids[i]
        mask[r, :L] = 1
        if tt is not None:
            tt[r, :L] = types[i]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(np.ascontiguousarray(encoded.labels[idx])),
        "index": torch.from_numpy(idx.astype(np.int64)),
    }
    if tt is not None:
        batch["token_type_ids"] = torch.from_numpy(tt)
    return batch


# What one more forward pass costs beyond its tokens, counted in padded tokens: `_least_padding` only cuts a
# batch where that saves more padding than this.
PASS_COST_TOKENS = 256


def _least_padding(srt: np.ndarray, lengths: np.ndarray, batch_size: int, max_tokens: int,
                   pass_cost: int) -> list[np.ndarray]:
    """Rows sorted by length cut into batches of at most batch_size rows and max_tokens padded tokens (a longer row
    goes alone) so that padded tokens + pass_cost per batch is least (dynamic programming over the cut points)."""
    n = srt.size
    width = lengths[srt]
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        best[end] = np.inf
        for begin in range(max(0, end - batch_size), end):
            padded = (end - begin) * int(width[end - 1])
            if padded > max_tokens and end - begin > 1:
                continue
            cost = best[begin] + padded + pass_cost
            if cost < best[end]:
                best[end], start[end] = cost, begin
    plan, end = [], n
    while end:
        plan.append(srt[start[end]:end])
        end = start[end]
    return plan[::-1]
