"""registry.data (and the registry.sources readers under it): loading, inference, validation errors.

Real-GLUE tests read /work/shared/data/glue (or $GLUE_DIR) in place and skip when it is absent.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from registry.data import splits as data, sources
from registry.errors import DataError, RegistryError
from tests.helpers import SENTS, col, sentences

GLUE_DIR = Path(os.environ.get("GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared/data/glue")
needs_glue = pytest.mark.skipif(
    not GLUE_DIR.is_dir(),
    reason=f"GLUE data not found at {GLUE_DIR} (set GLUE_DIR to the folder holding CoLA/, SST-2/, ...)",
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------
# real GLUE

GLUE = {
    #  task: (text columns, label column, task type, labels, metric, train rows, dev rows)
    "CoLA": (("3",), "1", "classification", ("0", "1"), "mcc", 8551, 1043),
    "SST-2": (("sentence",), "label", "classification", ("0", "1"), "accuracy", 67349, 872),
    # the README and the GLUE paper say 3,668, but this train.tsv holds 3,667 examples below its header
    "MRPC": (("#1 String", "#2 String"), "Quality", "classification", ("0", "1"), "f1", 3667, 408),
    "STS-B": (("sentence1", "sentence2"), "score", "regression", None, "spearman", 5749, 1500),
    "RTE": (
        ("sentence1", "sentence2"),
        "label",
        "classification",
        ("entailment", "not_entailment"),
        "accuracy",
        2490,
        277,
    ),
    "WNLI": (("sentence1", "sentence2"), "label", "classification", ("0", "1"), "accuracy", 635, 71),
}


def _file_rows(path: Path, header: bool) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    return rows[1:] if header else rows


@pytest.fixture(scope="module")
def glue():
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    cache: dict[str, data.TaskData] = {}

    def get(task: str) -> data.TaskData:
        if task not in cache:
            cache[task] = data.load(str(GLUE_DIR / task))
        return cache[task]

    return get


@needs_glue
@pytest.mark.parametrize("task", list(GLUE))
def test_glue_inference(glue, task):
    text_columns, label_column, task_type, labels, metric, n_train, n_dev = GLUE[task]
    td = glue(task)
    assert td.text_columns == text_columns
    assert td.label_column == label_column
    assert td.task_type == task_type
    assert td.labels == labels
    assert td.metric == metric
    assert td.validation_from == "dev.tsv"
    assert td.train.num_rows == n_train
    assert td.validation.num_rows == n_dev
    assert td.train.column_names == [*text_columns, label_column]
    assert td.validation.column_names == [*text_columns, label_column]
    want_dtype = "float" if task_type == "regression" else "int64"  # pyarrow's names for float32 and int64
    assert str(td.train.schema.field(label_column).type) == want_dtype
    # the fingerprint is the sha256 of a sha256sum-style manifest of train.tsv and dev.tsv
    manifest = "".join(
        f"{hashlib.sha256((GLUE_DIR / task / f).read_bytes()).hexdigest()}  {f}\n" for f in ("train.tsv", "dev.tsv")
    )
    assert td.fingerprint == hashlib.sha256(manifest.encode()).hexdigest()
    assert any(line.startswith("metric: ") for line in td.inferred)


@needs_glue
@pytest.mark.parametrize("task", list(GLUE))
def test_glue_rows_match_the_files(glue, task):
    """Every row's texts and label, in file order, against an independent csv read of the file."""
    text_columns, label_column, task_type, labels, *_ = GLUE[task]
    td = glue(task)
    header = task != "CoLA"
    for split, fname in ((td.train, "train.tsv"), (td.validation, "dev.tsv")):
        rows = _file_rows(GLUE_DIR / task / fname, header)
        names = (
            [c.strip() for c in (GLUE_DIR / task / fname).read_text(encoding="utf-8-sig").split("\n", 1)[0].split("\t")]
            if header
            else [str(i) for i in range(len(rows[0]))]
        )
        assert len(rows) == split.num_rows
        for c in text_columns:
            j = names.index(c)
            assert col(split, c) == [r[j] for r in rows]
        j = names.index(label_column)
        got = col(split, label_column)
        if task_type == "regression":
            np.testing.assert_allclose(got, [float(r[j]) for r in rows], rtol=1e-6)
        else:
            assert [labels[i] for i in got] == [r[j] for r in rows]


@needs_glue
def test_glue_quotes_are_text_not_csv_quoting(glue):
    # (SST-2 turns out to hold no double quote; STS-B and MRPC do, some at the start of a field,
    # where CSV quoting would swallow tabs and newlines up to the next quote.)
    for task in ("STS-B", "MRPC"):
        td = glue(task)
        texts = [t for c in td.text_columns for t in col(td.train, c) + col(td.validation, c)]
        quoted = [t for t in texts if '"' in t]
        assert any(t.startswith('"') for t in quoted), task
        assert all("\t" not in t and "\n" not in t for t in quoted)


@needs_glue
def test_glue_label_values(glue):
    cola = glue("CoLA")
    assert col(cola.train, "1")[:3] == [1, 1, 1]
    assert col(cola.train, "3")[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert any("no header row" in line for line in cola.inferred)
    rte = glue("RTE")
    assert col(rte.train, "label")[:2] == [1, 0]  # not_entailment, entailment
    stsb = glue("STS-B")
    assert col(stsb.train, "score")[:2] == pytest.approx([5.0, 3.8])
    mrpc = glue("MRPC")
    assert mrpc.train.column_names[0] == "#1 String"  # the BOM is gone from the header


@needs_glue
def test_glue_load_validation_matches_load(glue):
    rte = glue("RTE")
    val = data.load_validation(
        str(GLUE_DIR / "RTE"), text_columns=rte.text_columns, label_column=rte.label_column,
        task_type=rte.task_type, labels=rte.labels, metric=rte.metric,
    )
    assert val.train.num_rows == 0
    assert val.validation.to_pydict() == rte.validation.to_pydict()
    assert val.fingerprint == rte.fingerprint and val.validation_from == "dev.tsv" and val.metric == "accuracy"
    cola = glue("CoLA")  # headerless: the stored column names are positions
    val = data.load_validation(
        str(GLUE_DIR / "CoLA"), text_columns=("3",), label_column="1", task_type="classification", labels=("0", "1"),
    )
    assert val.validation.to_pydict() == cola.validation.to_pydict()
    assert val.metric == "mcc"  # inferred from the dev rows when not given
    with pytest.raises(
        DataError, match=r"label column label of dev.tsv has labels .*'not_entailment' \(131 rows\), first at line 2"
    ):
        data.load_validation(
            str(GLUE_DIR / "RTE"), text_columns=rte.text_columns, label_column="label",
            task_type="classification", labels=("entailment", "neutral"),
        )


@needs_glue
def test_glue_max_train_samples(glue):
    full = glue("CoLA")
    a = data.load(str(GLUE_DIR / "CoLA"), max_train_samples=500, seed=3)
    b = data.load(str(GLUE_DIR / "CoLA"), max_train_samples=500, seed=3)
    c = data.load(str(GLUE_DIR / "CoLA"), max_train_samples=500, seed=4)
    assert a.train.num_rows == 500 and a.validation.num_rows == 1043
    assert col(a.train, "3") == col(b.train, "3")
    assert col(a.train, "3") != col(c.train, "3")
    assert set(col(a.train, "3")) <= set(col(full.train, "3"))
    assert a.labels == full.labels and a.metric == "mcc" and a.fingerprint == full.fingerprint
    assert any("500 of 8551" in line for line in a.inferred)


# --------------------------------------------------------------------------------------------
# synthetic sources


def test_csv_with_header_quoting_and_string_labels(tmp_path):
    rows = ['"great, really great",pos'] + [f"{s},{'pos' if i % 2 else 'neg'}" for i, s in enumerate(sentences(29))]
    write(tmp_path / "d/train.csv", "text,label\n" + "\n".join(rows) + "\n")
    write(tmp_path / "d/dev.csv", "text,label\n" + "\n".join(rows[:6]) + "\n")
    td = data.load(str(tmp_path / "d"))
    assert td.text_columns == ("text",) and td.label_column == "label"
    assert td.labels == ("neg", "pos") and td.task_type == "classification"
    assert col(td.train, "text")[0] == "great, really great"
    assert col(td.train, "label")[:3] == [1, 0, 1]
    assert td.validation_from == "dev.csv" and td.validation.num_rows == 6
    assert td.metric == "accuracy"


def test_jsonl_pair_directory_with_validation_file(tmp_path):
    def recs(n):
        return "\n".join(
            json.dumps({"id": i, "premise": s, "hypothesis": s[::-1], "label": ["entail", "neutral", "contra"][i % 3]})
            for i, s in enumerate(sentences(n))
        )

    write(tmp_path / "d/train.jsonl", recs(30))
    write(tmp_path / "d/validation.jsonl", recs(9))
    td = data.load(str(tmp_path / "d"))
    assert td.text_columns == ("premise", "hypothesis")
    assert td.labels == ("contra", "entail", "neutral")
    assert td.metric == "accuracy"
    assert td.validation_from == "validation.jsonl"
    assert td.train.column_names == ["premise", "hypothesis", "label"]
    assert col(td.train, "label")[:3] == [1, 2, 0]


def test_json_list_single_file_holdout_is_deterministic(tmp_path):
    items = [{"sentence": s, "label": i % 2} for i, s in enumerate(sentences(50))]
    write(tmp_path / "data.json", json.dumps(items))
    a = data.load(str(tmp_path / "data.json"))
    b = data.load(str(tmp_path / "data.json"))
    c = data.load(str(tmp_path / "data.json"), seed=1)
    assert a.validation_from == "10% of data.json held out (seed 0)"
    assert c.validation_from == "10% of data.json held out (seed 1)"
    assert a.validation.num_rows == 5 and a.train.num_rows == 45
    va, tr = col(a.validation, "sentence"), col(a.train, "sentence")
    assert va == col(b.validation, "sentence") and tr == col(b.train, "sentence")
    assert va != col(c.validation, "sentence")
    assert set(va).isdisjoint(tr) and sorted(va + tr) == sorted(x["sentence"] for x in items)
    assert tr == [s for s in (x["sentence"] for x in items) if s in set(tr)]  # file order kept
    assert a.fingerprint == hashlib.sha256((tmp_path / "data.json").read_bytes()).hexdigest()
    # load_validation picks the same held-out rows
    v = data.load_validation(str(tmp_path / "data.json"), text_columns=["sentence"], label_column="label",
                             task_type="classification", labels=a.labels)
    assert v.validation.to_pydict() == a.validation.to_pydict()


def test_json_layouts(tmp_path):
    s = sentences(20)
    write(tmp_path / "cols.json", json.dumps({"text": s, "y": [i % 2 for i in range(20)]}))
    write(tmp_path / "wrapped.json", json.dumps({"data": [{"text": t, "label": i % 2} for i, t in enumerate(s)]}))
    write(tmp_path / "lines.json", "\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(s)))
    assert data.load(str(tmp_path / "cols.json")).label_column == "y"
    assert data.load(str(tmp_path / "wrapped.json")).train.num_rows == 18
    assert data.load(str(tmp_path / "lines.json")).train.num_rows == 18


def test_parquet_regression(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(n, off):
        return pa.table({
            "sentence1": sentences(n),
            "sentence2": [s.upper() for s in sentences(n)],
            "genre": ["news"] * n,
            "target": [round((i * 0.37 + off) % 5, 2) for i in range(n)],
        })

    (tmp_path / "d").mkdir()
    pq.write_table(table(40, 0.1), tmp_path / "d/train.parquet")
    pq.write_table(table(8, 0.2), tmp_path / "d/valid.parquet")
    td = data.load(str(tmp_path / "d"))
    assert td.text_columns == ("sentence1", "sentence2") and td.label_column == "target"
    assert td.task_type == "regression" and td.labels is None and td.metric == "spearman"
    assert td.validation_from == "valid.parquet"
    assert str(td.train.schema.field("target").type) == "float"
    assert col(td.train, "target")[:2] == pytest.approx([0.1, 0.47])


def test_headerless_tsv_bom_crlf_quotes_no_trailing_newline(tmp_path):
    lines = [f'src{i % 3}\t{i % 2}\t\t"{s}" he said' for i, s in enumerate(sentences(30))]
    write(tmp_path / "d/train.tsv", b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    write(tmp_path / "d/dev.tsv", "\n".join(lines[:4]))
    td = data.load(str(tmp_path / "d"))
    assert td.text_columns == ("3",) and td.label_column == "1"
    assert td.train.num_rows == 30 and td.validation.num_rows == 4
    assert col(td.train, "3")[0] == f'"{sentences(1)[0]}" he said'
    assert td.train.column_names == ["3", "1"]


def test_overrides(tmp_path):
    s = sentences(40)
    body = "id\tquestion\tanswer\trating\n" + "\n".join(
        f"{i}\t{t}\t{t[::-1]}\t{1 + i % 5}" for i, t in enumerate(s)
    )
    write(tmp_path / "qa.tsv", body)
    td = data.load(str(tmp_path / "qa.tsv"))
    assert td.text_columns == ("question", "answer") and td.label_column == "rating"
    assert td.task_type == "classification" and td.labels == ("1", "2", "3", "4", "5") and td.metric == "accuracy"

    td = data.load(str(tmp_path / "qa.tsv"), text_columns=["answer"], task_type="regression", metric="pearson")
    assert td.text_columns == ("answer",) and td.task_type == "regression" and td.labels is None
    assert td.metric == "pearson" and str(td.train.schema.field("rating").type) == "float"
    assert not any(line.startswith(("text column", "metric:")) for line in td.inferred)

    td = data.load(str(tmp_path / "qa.tsv"), text_columns=("question", "answer"), label_column="id",
                   task_type="classification", metric="accuracy")
    assert td.label_column == "id" and len(td.labels) == 40 and td.labels[:3] == ("0", "1", "2")
    assert td.labels[10] == "10"  # numeric sort, not "10" < "2"

    binary = "text\tlabel\n" + "\n".join(f"{t}\t{int(i % 4 == 0)}" for i, t in enumerate(s))
    write(tmp_path / "bin.tsv", binary)
    assert data.load(str(tmp_path / "bin.tsv")).metric == "mcc"  # minority 25% < 40%, single sentence
    assert data.load(str(tmp_path / "bin.tsv"), metric="f1").metric == "f1"


def test_minority_rule_for_pairs_picks_f1(tmp_path):
    s = sentences(40)
    body = "sentence1\tsentence2\tlabel\n" + "\n".join(f"{t}\t{t[::-1]}\t{int(i % 3 == 0)}" for i, t in enumerate(s))
    write(tmp_path / "pairs.tsv", body)
    td = data.load(str(tmp_path / "pairs.tsv"))
    assert td.metric == "f1"


def test_directory_without_dev_holds_out_train(tmp_path):
    write(tmp_path / "d/train.csv", "text,label\n" + "\n".join(f"{t},{i % 2}" for i, t in enumerate(sentences(20))))
    write(tmp_path / "d/test.csv", "text\n" + "\n".join(sentences(5)))
    td = data.load(str(tmp_path / "d"))
    assert td.validation_from == "10% of train.csv held out (seed 0)"
    assert td.validation.num_rows == 2 and td.train.num_rows == 18


def test_fingerprint_follows_file_bytes(tmp_path):
    body = "text,label\n" + "\n".join(f"{t},{i % 2}" for i, t in enumerate(sentences(20)))
    write(tmp_path / "a.csv", body)
    fp1 = data.load(str(tmp_path / "a.csv")).fingerprint
    write(tmp_path / "a.csv", body + "\n")
    assert data.load(str(tmp_path / "a.csv")).fingerprint != fp1


def test_hub_datasetdict_keeps_classlabel_order():
    """A hub dataset's ClassLabel names keep their order in the label map (so F1's class 1 is right).

    Uses the in-memory path every hub dataset goes through after `datasets.load_dataset`."""
    import datasets

    feats = datasets.Features({
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
        "idx": datasets.Value("int32"),
    })

    def split(n):
        s = sentences(n)
        return datasets.Dataset.from_dict(
            {"sentence1": s, "sentence2": s[::-1], "label": [int(i % 3 == 0) for i in range(n)], "idx": list(range(n))},
            features=feats,
        )

    dsd = datasets.DatasetDict({"train": split(30), "validation": split(6), "test": split(4)})
    src = sources._source_from_datasetdict(dsd, "hf:nyu-mll/glue:mrpc", "fp")
    td = data._load_source(src, text_columns=None, label_column=None, task_type=None, metric=None,
                           max_train_samples=None, seed=0)
    assert td.labels == ("not_equivalent", "equivalent")
    assert col(td.train, "label")[:4] == [1, 0, 0, 1]
    assert td.text_columns == ("sentence1", "sentence2") and td.metric == "f1"
    assert td.validation_from == "validation split" and td.validation.num_rows == 6


# --------------------------------------------------------------------------------------------
# bad input: DataError with a one-line, actionable message


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert isinstance(info.value, RegistryError)
    return msg


def test_missing_path(tmp_path):
    msg = _err(data.load, str(tmp_path / "nope"))
    assert msg.startswith(f"no such file or directory: {tmp_path / 'nope'};")
    msg = _err(data.load, "nyu-mll-test-absent/glue:cola")
    assert msg.endswith("or a Hugging Face hub dataset as hf:REPO_ID[:CONFIG] (e.g. hf:nyu-mll-test-absent/glue:cola)")


def test_empty_file(tmp_path):
    write(tmp_path / "empty.tsv", "")
    assert (
        _err(data.load, str(tmp_path / "empty.tsv")) == f"{tmp_path / 'empty.tsv'} is empty; it needs labelled examples"
    )
    write(tmp_path / "blank.csv", "\n \n")
    assert "is empty" in _err(data.load, str(tmp_path / "blank.csv"))


def test_header_only_file(tmp_path):
    write(tmp_path / "h.tsv", "sentence\tlabel\n")
    assert _err(data.load, str(tmp_path / "h.tsv")) == (
        "h.tsv has a header row (sentence, label) but no examples; add labelled rows below it"
    )
    write(
        tmp_path / "d/train.tsv", "sentence\tlabel\n" + "\n".join(f"{t}\t{i % 2}" for i, t in enumerate(sentences(8)))
    )
    write(tmp_path / "d/dev.tsv", "sentence\tlabel")
    assert "dev.tsv has a header row (sentence, label) but no examples" in _err(data.load, str(tmp_path / "d"))


def test_no_text_column(tmp_path):
    write(tmp_path / "t.csv", "id,word,label\n" + "\n".join(f"{i},w{i},{i % 2}" for i in range(20)))
    assert _err(data.load, str(tmp_path / "t.csv")) == (
        "no column of t.csv looks like text (a mean of 3+ words); columns are: id, word, label; "
        "pass --text-column NAME (twice for a sentence pair)"
    )


def test_label_column_with_missing_values(tmp_path):
    rows = [f"{t},{'' if i in (2, 5) else i % 2}" for i, t in enumerate(sentences(20))]
    write(tmp_path / "m.csv", "text,label\n" + "\n".join(rows))
    assert _err(data.load, str(tmp_path / "m.csv")) == (
        "m.csv has 2 of 20 rows (10.0%) that cannot train: no label (lines 4, 7); more than the 5% that may be "
        "skipped: fix those rows, or check --text-column, --label-column and --task-type"
    )
    items = [{"text": t, "label": None if i == 7 else i % 2} for i, t in enumerate(sentences(20))]
    write(tmp_path / "m.jsonl", "\n".join(map(json.dumps, items)))
    td = data.load(str(tmp_path / "m.jsonl"))  # 1 of 20 is within the 5% that may be skipped
    assert "skipped 1 of 20 rows of m.jsonl that cannot train: no label (line 8) (--strict refuses them)" in td.inferred
    assert td.train.num_rows + td.validation.num_rows == 19 and sum(td.skipped.values()) == 1
    assert _err(data.load, str(tmp_path / "m.jsonl"), strict=True) == (
        "m.jsonl has 1 of 20 rows that cannot train: no label (line 8); fix or drop those rows, or leave out --strict "
        "to skip them"
    )


def test_one_class(tmp_path):
    write(tmp_path / "one.csv", "text,label\n" + "\n".join(f"{t},pos" for t in sentences(20)))
    assert _err(data.load, str(tmp_path / "one.csv")).startswith(
        "label column label of one.csv has one class ('pos') in all 18 training rows; a classifier needs at least two"
    )


def test_non_utf8(tmp_path):
    write(tmp_path / "latin.tsv", "sentence\tlabel\n".encode() + "caf\xe9 au lait is nice\t1\n".encode("latin-1"))
    assert _err(data.load, str(tmp_path / "latin.tsv")) == (
        "latin.tsv is not UTF-8 text (byte 0xe9 at offset 18, line 2); re-save it as UTF-8"
    )


def test_unknown_label_column(tmp_path):
    write(tmp_path / "d/train.tsv", "\n".join(f"src\t{i % 2}\t\t{t}" for i, t in enumerate(sentences(20))))
    write(tmp_path / "d/dev.tsv", "\n".join(f"src\t{i % 2}\t\t{t}" for i, t in enumerate(sentences(4))))
    assert _err(data.load, str(tmp_path / "d"), label_column="LABEL") == (
        "--label-column LABEL names no column of train.tsv; columns are: 0, 1, 2, 3"
    )
    assert _err(data.load, str(tmp_path / "d"), text_columns=["sentence"]) == (
        "--text-column sentence names no column of train.tsv; columns are: 0, 1, 2, 3"
    )


def test_hub_id_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    msg = _err(data.load, "hf:nyu-mll-test-absent/glue:cola")
    assert msg.startswith("cannot reach the Hugging Face hub for dataset hf:nyu-mll-test-absent/glue:cola (")
    assert msg.endswith("): pass a local directory or file with --data")
    assert _err(data.load, "hf:bad id!").startswith("'hf:bad id!' is not a hub dataset id; write hf:REPO_ID")


def test_more_bad_inputs(tmp_path):
    good = "text,label\n" + "\n".join(f"{t},{i % 2}" for i, t in enumerate(sentences(20)))
    write(tmp_path / "g.csv", good)
    g = str(tmp_path / "g.csv")
    assert _err(data.load, g, task_type="ordinal") == "--task-type ordinal is not one of: classification, regression"
    assert _err(data.load, g, metric="bleu").startswith("--metric bleu is not a known metric")
    assert _err(data.load, g, metric="spearman").startswith("--metric spearman needs numeric targets")
    assert _err(data.load, g, max_train_samples=0) == "--max-train-samples must be a positive integer, got 0"
    assert _err(data.load, g, text_columns=["text"], label_column="text").startswith(
        "--label-column text is also a --text-column"
    )
    assert _err(data.load, g, text_columns=["text", "text", "label"]).startswith("--text-column was given 3 times")

    write(tmp_path / "x.xlsx", "whatever")
    assert "unsupported file type '.xlsx'" in _err(data.load, str(tmp_path / "x.xlsx"))

    write(
        tmp_path / "s.csv",
        "text,label\n" + "\n".join(f"{t},{'high' if i % 2 else 'low'}" for i, t in enumerate(sentences(20))),
    )
    assert "has a non-numeric value 'low' (line 2), so it cannot be a regression target" in _err(
        data.load, str(tmp_path / "s.csv"), task_type="regression"
    )

    three = "text,label\n" + "\n".join(f"{t},{i % 3}" for i, t in enumerate(sentences(30)))
    write(tmp_path / "three.csv", three)
    assert _err(data.load, str(tmp_path / "three.csv"), metric="f1").startswith(
        "--metric f1 is binary F1 but the task has 3 classes"
    )

    write(
        tmp_path / "rag.tsv",
        "text\tlabel\n" + "\n".join(f"{t}\t{i % 2}" for i, t in enumerate(sentences(5))) + "\nextra\tfield\there\n",
    )
    assert _err(data.load, str(tmp_path / "rag.tsv")).startswith("rag.tsv line 7 has 3 fields but line 1 has 2")

    write(tmp_path / "bad.jsonl", '{"text": "a b c", "label": 1}\n{"text": oops}\n')
    assert _err(data.load, str(tmp_path / "bad.jsonl")).startswith("bad.jsonl line 2 is not valid JSON")

    write(tmp_path / "bad.parquet", "not parquet at all")
    assert _err(data.load, str(tmp_path / "bad.parquet")).startswith("bad.parquet is not a readable Parquet file")

    write(
        tmp_path / "emptytext.csv",
        "text,label\n" + "\n".join(f"{'' if i == 3 else t},{i % 2}" for i, t in enumerate(sentences(20))),
    )
    assert _err(data.load, str(tmp_path / "emptytext.csv"), text_columns=["text"], strict=True).startswith(
        "emptytext.csv has 1 of 20 rows that cannot train: empty text (line 5); fix or drop those rows"
    )


def test_dev_file_problems(tmp_path):
    train = "text,label\n" + "\n".join(f"{t},{'pos' if i % 2 else 'neg'}" for i, t in enumerate(sentences(20)))
    write(tmp_path / "a/train.csv", train)
    write(tmp_path / "a/dev.csv", "text,label\n" + f"{SENTS[0]},meh\n{SENTS[1]},pos\n{SENTS[2]},meh\n")
    assert _err(data.load, str(tmp_path / "a")) == (
        "label column label of dev.csv has labels train.csv never uses: 'meh' (2 rows), first at line 2; "
        "known labels: neg, pos; fix those rows"
    )
    write(tmp_path / "b/train.csv", train)
    write(tmp_path / "b/dev.csv", "sentence,label\n" + f"{SENTS[0]},pos\n")
    assert _err(data.load, str(tmp_path / "b")).startswith(
        "dev.csv's first row (sentence, label) is not a header naming 'text', 'label'"
    )
    write(tmp_path / "c/train.csv", train)
    write(tmp_path / "c/train.tsv", train)
    assert (
        _err(data.load, str(tmp_path / "c"))
        == f"{tmp_path / 'c'} has several train files (train.csv, train.tsv); keep one"
    )
    write(tmp_path / "e/notes.txt", "hello")
    assert _err(data.load, str(tmp_path / "e")).startswith(f"{tmp_path / 'e'} has no train file")


# --------------------------------------------------------------------------------------------
# messy data: rows that cannot train are skipped (up to 5% of a file), counted and named; --strict refuses


MESSY_ROWS = 60
EMPTY_TEXT, NO_LABEL = 4, 9  # 0-based rows


def _messy_records() -> list[dict]:
    records = [{"text": t, "label": i % 2} for i, t in enumerate(sentences(MESSY_ROWS))]
    records[EMPTY_TEXT]["text"] = ""
    records[NO_LABEL]["label"] = None
    return records


def _write_messy(tmp_path: Path, reader: str) -> str:
    """The same 60 rows, one with an empty text and one without a label, in each reader's format."""
    records = _messy_records()
    if reader in ("tsv", "csv"):
        sep = "\t" if reader == "tsv" else ","
        body = "\n".join(f"{r['text']}{sep}{'' if r['label'] is None else r['label']}" for r in records)
        return str(write(tmp_path / f"messy.{reader}", f"text{sep}label\n{body}\n"))
    if reader == "json":
        return str(write(tmp_path / "messy.json", json.dumps(records)))
    if reader == "jsonl":
        return str(write(tmp_path / "messy.jsonl", "\n".join(map(json.dumps, records))))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "messy.parquet")
    return str(tmp_path / "messy.parquet")


def _load_messy_hub(strict: bool) -> data.TaskData:
    """The hub reader, through the in-memory path every hub dataset takes after `datasets.load_dataset`."""
    import datasets

    records = _messy_records()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in records], "label": [-1 if r["label"] is None else r["label"] for r in records]},
        features=features)
    validation = datasets.Dataset.from_dict({"text": sentences(6), "label": [0, 1] * 3}, features=features)
    src = sources._source_from_datasetdict(
        datasets.DatasetDict({"train": train, "validation": validation}), "hf:x/y", "fp"
    )
    return data._load_source(src, text_columns=None, label_column=None, task_type=None, metric=None,
                             max_train_samples=None, seed=0, strict=strict)


MESSY_WHERE = {  # how each reader names the two rows
    "tsv": ("line 6", "line 11"), "csv": ("line 6", "line 11"), "jsonl": ("line 5", "line 10"),
    "json": ("row 5", "row 10"), "parquet": ("row 5", "row 10"), "hub": ("row 5", "row 10"),
}


@pytest.mark.parametrize("reader", list(MESSY_WHERE))
def test_rows_that_cannot_train_are_skipped_counted_and_named(tmp_path, reader):
    (kind, text_at), (_, label_at) = (w.split() for w in MESSY_WHERE[reader])
    name = "train split of hf:x/y" if reader == "hub" else f"messy.{reader}"
    load = (
        _load_messy_hub if reader == "hub" else lambda strict: data.load(_write_messy(tmp_path, reader), strict=strict)
    )
    td = load(False)
    skipped = [line for line in td.inferred if line.startswith("skipped")]
    assert skipped == [f"skipped 2 of 60 rows of {name} that cannot train: empty text ({kind} {text_at}); "
                       f"no label ({kind} {label_at}) (--strict refuses them)"]
    assert td.train.num_rows + td.validation.num_rows == (58 if reader != "hub" else 64)
    assert sum(td.skipped.values()) == 2
    kept = col(td.train, "text") + (col(td.validation, "text") if reader != "hub" else [])
    assert "" not in kept and sentences(MESSY_ROWS)[NO_LABEL] not in kept
    assert td.labels == (("neg", "pos") if reader == "hub" else ("0", "1")) and td.task_type == "classification"
    with pytest.raises(DataError) as refused:
        load(True)
    assert str(refused.value) == (f"{name} has 2 of 60 rows that cannot train: empty text ({kind} {text_at}); no label "
                                  f"({kind} {label_at}); fix or drop those rows, or leave out --strict to skip them")


def test_the_hold_out_is_the_same_rows_whatever_is_skipped(tmp_path):
    """Skipping happens after the hold-out is drawn, so load_validation (eval) scores the rows load held out."""
    path = _write_messy(tmp_path, "jsonl")
    td = data.load(path)
    clean = [r for i, r in enumerate(_messy_records()) if i not in (EMPTY_TEXT, NO_LABEL)]
    validation = data.load_validation(path, text_columns=["text"], label_column="label", task_type="classification",
                                      labels=td.labels)
    assert validation.validation.to_pydict() == td.validation.to_pydict()
    assert set(col(td.train, "text")) | set(col(td.validation, "text")) == {r["text"] for r in clean}


# --------------------------------------------------------------------------------------------
# stray values in a label column of numbers: never a class, never a change of task type


@pytest.mark.parametrize(("stray", "shown"), [("inf", "'inf'"), ("score", "'score'"), ("3.5 stars", "'3.5 stars'")])
def test_a_stray_value_among_regression_targets_is_skipped_not_a_class(tmp_path, stray, shown):
    targets = [f"{(i * 0.37) % 5:.2f}" for i in range(60)]
    targets[7] = stray
    rows = [f"{t}\t{y}" for t, y in zip(sentences(60), targets)]
    write(tmp_path / "stsb.tsv", "text\tscore\n" + "\n".join(rows))
    td = data.load(str(tmp_path / "stsb.tsv"))
    assert td.task_type == "regression" and td.labels is None and td.metric == "spearman"
    assert f"skipped 1 of 60 rows of stsb.tsv that cannot train: score not a number ({shown}) (line 9) " \
           "(--strict refuses them)" in td.inferred
    assert td.train.num_rows + td.validation.num_rows == 59


def test_a_repeated_header_among_integer_labels_adds_no_class(tmp_path):
    rows = [f"{t}\t{i % 3}" for i, t in enumerate(sentences(60))]
    rows[20] = "text\tlabel"  # two files concatenated: the second header became a row
    write(tmp_path / "three.tsv", "text\tlabel\n" + "\n".join(rows))
    td = data.load(str(tmp_path / "three.tsv"))
    assert td.labels == ("0", "1", "2") and td.task_type == "classification"
    assert any("label not a number ('label') (line 22)" in line for line in td.inferred)
    # the stored task's eval skips the same row rather than calling it an unknown class
    validation = data.load_validation(str(tmp_path / "three.tsv"), text_columns=["text"], label_column="label",
                                      task_type="classification", labels=td.labels)
    assert validation.validation.to_pydict() == td.validation.to_pydict()


def test_words_that_are_many_are_classes_not_strays(tmp_path):
    """A column that is not mostly numbers keeps every value as a class (here 'n/a' is 1 in 3)."""
    rows = [f"{t}\t{['1', '2', 'n/a'][i % 3]}" for i, t in enumerate(sentences(60))]
    write(tmp_path / "mixed.tsv", "text\tlabel\n" + "\n".join(rows))
    td = data.load(str(tmp_path / "mixed.tsv"))
    assert td.labels == ("1", "2", "n/a") and not any(line.startswith("skipped") for line in td.inferred)


def test_a_local_file_loads_without_importing_datasets(tmp_path):
    """`datasets` is for hub sources only: a local file's splits are pyarrow tables."""
    import subprocess
    import sys

    path = write(tmp_path / "d.tsv", "text\tlabel\n" + "\n".join(f"{t}\t{i % 2}" for i, t in enumerate(sentences(20))))
    code = (f"import sys; from registry.data import splits as data; td = data.load({str(path)!r}); "
            "print(type(td.train).__module__, 'datasets' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["pyarrow.lib", "False"]
