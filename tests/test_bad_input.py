"""Bad input to every command, table-driven, on SQLite and PostgreSQL.

Each row must fail with exit code ≠ 0 and exactly one line on stderr that names the problem and
says what to do, with no traceback (`--debug` shows one), and leave the registry exactly as it was:
every row of every table and every file under the home and the store (tests.helpers.snapshot).
One registry per dialect, holding two trained tasks (one with two versions), serves every row.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from registry.cli.main import cli
from registry.storage import db
from registry.storage.config import Settings
from tests.bad_bundles import write_bad_bundles
from tests.helpers import PG_URL, one_line_error, snapshot

UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/none"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    problem: str  # the line names the problem …
    todo: str  # … and says what to do
    setup: str | None = None  # a context in SETUPS that the command runs inside
    exit_code: int = 1


def case(id, args, problem, todo, setup=None, exit_code=1):
    return Case(id, tuple(args.split()) if isinstance(args, str) else tuple(args), problem, todo, setup, exit_code)


NEW = "add-task newtask --data"
AGAIN = "export the bundle again"
CODE = "use a checkpoint of a supported type without custom code"
BAD_BUNDLES = [  # tests.bad_bundles' variants: (name, the problem the line names, what it says to do)
    ("code-listed", "manifest.json is malformed (it lists 'base/evil.py', which a bundle never holds)", AGAIN),
    ("code-unlisted", "holds base/evil.py, which manifest.json does not list", "remove it, or export the bundle again"),
    ("auto-map", "config.json names code to run (auto_map): the registry never runs code from a checkpoint", CODE),
    ("tokenizer-auto-map", "tokenizer_config.json names code to run (auto_map)", CODE),
    ("model-type", "is a 'gpt2' model", "supported: bert, distilbert, electra, roberta, xlm-roberta"),
    ("label-escape", "the label '\\x1b[2J\\x1b[31mnegative' holds the non-printable character U+001B", AGAIN),
    ("metric-unknown", "task 'sentiment': --metric bleu is not a known metric", AGAIN),
    ("labels-for-regression", "task 'sentiment': a regression task has no label map", AGAIN),
    ("adapter-size", "adapters/sentiment.safetensors holds tensor", AGAIN),
    ("label-count",
     "adapters/sentiment.safetensors holds tensor 'head.bias' of shape [2], where this base and task need [3]", AGAIN),
    ("config-disagrees", "adapters/sentiment.json says text_columns is ['review'], but the task's is ['sentence']",
     AGAIN),
    ("adapter-key", "adapters/sentiment.safetensors does not load on this registry's base", "1 missing, 1 unexpected"),
    ("adapter-float16", "adapters/sentiment.safetensors holds F16 tensor", AGAIN),
    ("adapter-nan", "adapters/sentiment.safetensors holds NaN or infinite values in 'head.bias'", AGAIN),
    ("base-float16", "base/model.safetensors holds F16 tensors, but manifest.json says float32", AGAIN),
    ("manifest-not-json", "manifest.json cannot be read (JSONDecodeError)", AGAIN),
    ("manifest-not-utf8", "manifest.json cannot be read (UnicodeDecodeError)", AGAIN),
    ("manifest-deep", "manifest.json cannot be read (RecursionError)", AGAIN),
    ("manifest-types",
     "task 'sentiment': position, adapter_size, max_length and trainable_params must be positive integers", AGAIN),
    ("config-not-json", "adapters/sentiment.json is not JSON (JSONDecodeError)", AGAIN),
    ("config-list", "adapters/sentiment.json is not a JSON object", AGAIN),
    ("config-deep", "adapters/sentiment.json is not JSON (RecursionError)", AGAIN),
    ("adapter-garbage", "adapters/sentiment.safetensors is not a safetensors file", AGAIN),
    ("base-garbage", "base/model.safetensors is not a safetensors file", AGAIN),
    ("base-config-not-json", "base/config.json is not JSON (UnicodeDecodeError)", AGAIN),
    ("tokenizer-not-json", "base/tokenizer.json is not JSON (JSONDecodeError)", AGAIN),
    ("tokenizer-invalid", "base/ cannot be loaded by transformers (KeyError: 'added_tokens')", AGAIN),
    ("bomb.tar.gz", "bomb.tar.gz is a compressed or damaged tar",
     "pass the plain .tar `registry export --archive` writes"),
    ("big-member.tar", "bundle/base/config.json is 4194", AGAIN),
    ("extra-member.tar", "holds bundle/base/notes.txt, which manifest.json does not list (once)", AGAIN),
]
IMPORT_ONLY = {"adapter-key", "adapter-nan"}  # served as they are; import loads every adapter on the base first
LOAD_ONLY = {"tokenizer-invalid"}  # an import into a registry with this base never reads the bundle's tokenizer
CASES = [
    # --- add-task: data that cannot be used (nothing is reserved, trained or stored)
    case(
        "data-missing",
        f"{NEW} {{bad}}/nope.tsv",
        "no such file or directory: ",
        "pass a directory with train/dev files",
    ),
    case("data-dir-without-train", f"{NEW} {{bad}}/nothing", "has no train file", "train.tsv, train.csv"),
    case(
        "data-unreadable",
        f"{NEW} {{bad}}/unreadable.tsv",
        "cannot read",
        "check the path and its permissions",
        "unreadable",
    ),
    case("data-empty", f"{NEW} {{bad}}/empty.tsv", "is empty", "it needs labelled examples"),
    case(
        "data-header-only",
        f"{NEW} {{bad}}/header.tsv",
        "has a header row (sentence, label) but no examples",
        "add labelled rows",
    ),
    case(
        "data-no-label-column",
        f"{NEW} {{bad}}/nolabel.tsv",
        "cannot tell which column of nolabel.tsv holds the labels",
        "pass --label-column NAME",
    ),
    case(
        "data-absent-label-column",
        f"{NEW} {{good}} --label-column stars",
        "--label-column stars names no column of good.tsv",
        "columns are: sentence, label",
    ),
    case(
        "data-absent-text-column",
        f"{NEW} {{good}} --text-column review",
        "--text-column review names no column of good.tsv",
        "columns are: sentence, label",
    ),
    case(
        "data-no-text-column",
        f"{NEW} {{bad}}/notext.tsv",
        "no column of notext.tsv looks like text",
        "pass --text-column NAME",
    ),
    case(
        "data-ragged-row",
        f"{NEW} {{bad}}/ragged.tsv",
        "ragged.tsv line 32 has 3 fields but line 1 has 2",
        "fix that line",
    ),
    case(
        "labels-nan",
        f"{NEW} {{bad}}/nan.tsv",
        "nan.tsv has 15 of 30 rows (50.0%) that cannot train: no label (lines 2, 4, 6, ...)",
        "more than the 5% that may be skipped: fix those rows",
    ),
    case(
        "labels-empty-strict",
        f"{NEW} {{bad}}/blank.tsv --strict",
        "blank.tsv has 1 of 30 rows that cannot train: no label (line 9)",
        "fix or drop those rows, or leave out --strict to skip them",
    ),
    case(
        "text-empty-strict",
        f"{NEW} {{bad}}/hole.tsv --strict",
        "hole.tsv has 1 of 30 rows that cannot train: empty sentence (line 4)",
        "leave out --strict to skip them",
    ),
    case(
        "labels-stray-strict",
        f"{NEW} {{bad}}/stray.tsv --strict",
        "stray.tsv has 1 of 30 rows that cannot train: label not a number ('inf') (line 6)",
        "leave out --strict",
    ),
    case(
        "text-empty-too-many",
        f"{NEW} {{bad}}/holes.tsv",
        "holes.tsv has 3 of 30 rows (10.0%) that cannot train: empty sentence",
        "fix those rows, or check --text-column, --label-column and --task-type",
    ),
    case(
        "labels-single-class", f"{NEW} {{bad}}/oneclass.tsv", "has one class ('1')", "a classifier needs at least two"
    ),
    case(
        "labels-not-numbers",
        f"{NEW} {{bad}}/words.tsv --task-type regression",
        "non-numeric value 'pos'",
        "pass --task-type classification",
    ),
    case(
        "labels-metric-mismatch",
        f"{NEW} {{good}} --metric spearman",
        "--metric spearman needs numeric targets",
        "use accuracy, f1 or mcc",
    ),
    case(
        "data-not-utf8", f"{NEW} {{bad}}/latin1.tsv", "latin1.tsv is not UTF-8 text (byte 0xe8", "re-save it as UTF-8"
    ),
    case(
        "data-huge-line",
        f"{NEW} {{bad}}/huge.tsv",
        "huge.tsv line 32 cannot be parsed (field larger than field limit",
        "fix that line",
    ),
    case("data-unsupported-type", f"{NEW} {{bad}}/data.txt", "data.txt is not tab- or comma-separated text",
         "give it one of those forms (.tsv"),
    case(
        "data-hub-offline",
        f"{NEW} hf:nyu-mll/glue:cola",
        "cannot reach the Hugging Face hub",
        "pass a local directory or file",
    ),
    case("data-option-missing", "add-task newtask", "Missing option '--data'", "add-task --help`)", exit_code=2),
    case("epochs-zero", f"{NEW} {{good}} --epochs 0", "Invalid value for '--epochs'", "add-task --help`)", exit_code=2),
    case(
        "device-without-cuda",
        f"{NEW} {{good}} --device cuda",
        "--device cuda: no CUDA device is available here",
        "use --device auto or cpu",
        "no_cuda",
    ),
    # --- heartbeat settings (every command that sweeps checks them before writing anything)
    case(
        "stale-after-not-a-number",
        "runs --sweep",
        "REGISTRY_STALE_AFTER_SECONDS='soon'",
        "give a positive number of seconds",
        "stale_after_soon",
    ),
    case(
        "stale-after-under-3-heartbeats",
        f"{NEW} {{good}}",
        "REGISTRY_STALE_AFTER_SECONDS=20 is under 3 heartbeats",
        "raise it, or lower the heartbeat",
        "stale_after_20",
    ),
    case(
        "heartbeat-negative",
        "verify --prune",
        "REGISTRY_HEARTBEAT_SECONDS='-1'",
        "give a positive number of seconds",
        "heartbeat_negative",
    ),
    # --- add-task: names
    case(
        "name-taken", "add-task sentiment --data {good}", "task 'sentiment' already exists (ready)", "pick another name"
    ),
    *(
        case(
            f"name-{label}",
            ["add-task", name, "--data", "{good}"],
            f"invalid task name {name!r}",
            "use lowercase letters",
        )
        for label, name in (
            ("slash", "a/b"),
            ("dotdot", ".."),
            ("dotdot-path", "../x"),
            ("space", "my task"),
            ("uppercase", "Sentiment"),
            ("empty", ""),
            ("leading-underscore", "_x"),
        )
    ),
    # --- unknown tasks
    case("show-unknown", "show nope", "no task named 'nope'", "known tasks: sentiment"),
    case("history-unknown", "history nope", "no task named 'nope'", "known tasks: sentiment"),
    case("runs-unknown", "runs nope", "no task named 'nope'", "known tasks: sentiment"),
    case("eval-unknown", "eval nope", "no ready task named 'nope'", "known tasks: sentiment"),
    # --- eval: data and artifacts
    case("eval-data-missing", "eval sentiment --data {bad}/nope.tsv", "no such file or directory", "pass a directory"),
    case(
        "eval-data-other-columns",
        "eval sentiment --data {bad}/notext.tsv",
        "notext.tsv has no column sentence, which the task uses",
        "give it the same columns",
    ),
    case(
        "eval-data-new-label",
        "eval sentiment --data {bad}/words.tsv",
        "never uses: 'neg' (2 rows), 'pos' (1 rows)",
        "fix those rows",
    ),
    case(
        "eval-artifact-tampered",
        "eval sentiment",
        "does not match its sha256 (corrupt or tampered)",
        "run `registry verify`",
        "tampered",
    ),
    case(
        "eval-artifact-missing",
        "eval sentiment",
        "is missing from the store",
        "run `registry verify`",
        "adapter_missing",
    ),
    # --- export, import, predict
    case(
        "export-unknown-task",
        "export --tasks nope --output {fresh}/bundle",
        "no ready task named 'nope'",
        "known tasks: sentiment",
    ),
    case("export-output-exists", "export --output {bad}", "already exists", "pass --force to replace it"),
    case("import-missing", "import {bad}/nope", "Path '", "import --help`)", exit_code=2),
    case("import-not-a-bundle", "import {good}", "good.tsv is not a bundle", "written by `registry export`"),
    case("predict-unknown-task", "predict --task nope hello", "no ready task named 'nope'", "known tasks: sentiment"),
    case("predict-no-text", "predict --task sentiment", "give either TEXT arguments", "--input FILE.jsonl"),
    case("predict-input-not-jsonl", "predict --input {good}", "good.tsv line 1 is not JSON", 'one {"task", "text"'),
    case(
        "predict-bundle-missing",
        "predict --bundle {bad}/nope --task sentiment hi",
        "Path '",
        "predict --help`)",
        exit_code=2,
    ),
    # --- versions: promote, retire, restore, --new-version ('sentiment' has versions 1 and 2, current; 'second' has 1)
    case(
        "promote-unknown-version",
        "promote sentiment --version 9",
        "task 'sentiment' has no version 9 (its versions: 1, 2)",
        "pick one of them, see `registry show sentiment`",
    ),
    case(
        "promote-other-tasks-version",
        "promote second --version 2",
        "task 'second' has no version 2 (its versions: 1)",
        "see `registry show second`",
    ),
    case(
        "promote-current",
        "promote sentiment --version 2",
        "version 2 of task 'sentiment' is already current",
        "nothing to promote",
    ),
    case(
        "promote-unknown-task",
        "promote nope --version 1",
        "no ready task named 'nope'",
        "known tasks: sentiment, second",
    ),
    case(
        "promote-version-zero",
        "promote sentiment --version 0",
        "Invalid value for '--version'",
        "promote --help`)",
        exit_code=2,
    ),
    case(
        "new-version-other-labels",
        "add-task sentiment --new-version --data {bad}/words.tsv",
        "--new-version of 'sentiment': the data has labels ['neg', 'pos'], the task ['0', '1']",
        "add it under a new name",
    ),
    case(
        "new-version-other-type",
        "add-task sentiment --new-version --data {good} --task-type regression",
        "the data has task type regression, the task classification",
        "add it under a new name",
    ),
    case(
        "new-version-unknown-task",
        "add-task nope --new-version --data {good}",
        "--new-version: no ready task named 'nope'",
        "drop --new-version to add it as a new task",
    ),
    case(
        "promote-without-new-version",
        f"{NEW} {{good}} --promote",
        "--promote needs --new-version",
        "add-task --help`)",
        exit_code=2,
    ),
    case("retire-unknown", "retire nope", "no ready task named 'nope'", "known tasks: sentiment"),
    case(
        "retire-retired",
        "retire second",
        "task 'second' is already retired",
        "`registry restore second` brings it back",
        "retired",
    ),
    case("restore-not-retired", "restore sentiment", "task 'sentiment' is not retired", "nothing to restore"),
    *(
        case(
            f"{args.split()[0]}-retired",
            args,
            "task 'second' is retired",
            "`registry restore second` brings it back",
            "retired",
        )
        for args in (
            "export --tasks second --output {fresh}/bundle",
            "predict --task second hi",
            "eval second",
            "promote second --version 1",
            "add-task second --new-version --data {good}",
            "serve --port 0 --tasks second",
        )
    ),
    # --- bundles that carry code, lie, or are garbage (issue 14): import and predict refuse each, naming the file
    *(
        case(f"{command.split()[0]}-{variant}", f"{command} {{bundles}}/{variant}", problem, todo)
        for variant, problem, todo in BAD_BUNDLES
        for command in ("import", "predict --task sentiment hello --bundle")[
            variant in LOAD_ONLY : 1 if variant in IMPORT_ONLY else 2
        ]
    ),
    *(
        case(
            f"init-base-{variant}",
            f"--home {{fresh}} --db sqlite:///{{fresh}}/registry.db --store {{fresh}}/artifacts init "
            f"--base {{bundles}}/{variant}/base",
            problem,
            todo,
        )
        for variant, problem, todo in (
            ("code-listed", "/code-listed/base': config.json names code to run (auto_map)", CODE),
            ("auto-map", "/auto-map/base': config.json names code to run (auto_map)", CODE),
            (
                "tokenizer-auto-map",
                "/tokenizer-auto-map/base': tokenizer_config.json names code to run (auto_map)",
                CODE,
            ),
            (
                "model-type",
                "/model-type/base' is a 'gpt2' model",
                "supported: bert, distilbert, electra, roberta, xlm-roberta",
            ),
        )
    ),
    case(
        "import-fresh-home-bad-tokenizer",
        "--home {fresh} --db sqlite:///{fresh}/registry.db --store {fresh}/artifacts "
        "import {bundles}/tokenizer-invalid",
        "/tokenizer-invalid/base': KeyError: 'added_tokens'",
        "pass a directory with config.json",
    ),
    case(
        "import-fresh-home-bad-adapter",
        "--home {fresh} --db sqlite:///{fresh}/registry.db --store {fresh}/artifacts import {bundles}/adapter-key",
        "adapters/sentiment.safetensors does not load on the bundle's base",
        "unexpected",
    ),
    # --- export --force replaces only a previous bundle, never the registry or anything else
    case(
        "export-force-home",
        "export --force --output {home}",
        "is the registry home",
        "write the bundle outside the registry",
    ),
    case(
        "export-force-store",
        "export --force --output {home}/artifacts",
        "is the artifact store",
        "outside the registry",
    ),
    case("export-force-parent", "export --force --output {root}", "holds the registry home", "outside the registry"),
    case("export-inside-home", "export --output {home}/bundle", "is inside the registry home", "outside the registry"),
    case(
        "export-force-user-dir",
        "export --force --output {bad}",
        "is not a bundle (it holds files no bundle manifest lists)",
        "--force replaces only a bundle written by `registry export`",
    ),
    case(
        "export-unwritable", "export --output {good}/bundle", "cannot write the bundle at", "choose a writable --output"
    ),
    case(
        "export-force-user-file",
        "export --force --archive --output {bad}/data.txt.tar",
        "is not a bundle",
        "choose another --output",
        "user_tar",
    ),
    # --- options no run can use, refused before anything is written
    case("lr-nan", f"{NEW} {{good}} --lr nan", "--lr nan is not a positive finite number", "pass one like 1e-3"),
    case("lr-inf", f"{NEW} {{good}} --lr inf", "--lr inf is not a positive finite number", "pass one like 1e-3"),
    case(
        "max-length-over-positions",
        f"{NEW} {{good}} --max-length 512",
        "--max-length 512 is more than the base's 128 positions",
        "use --max-length 128 or less",
    ),
    case(
        "predict-input-device",
        "predict --task sentiment --input /dev/zero",
        "/dev/zero is not a regular file",
        "pass a file",
        exit_code=2,
    ),
    case(
        "predict-input-fifo",
        "predict --task sentiment --input {bad}/fifo",
        "fifo is not a regular file",
        "pass a file",
        exit_code=2,
    ),
    case("serve-unknown-task", "serve --port 0 --tasks nope", "no ready task named 'nope'", "known tasks: sentiment"),
    case("serve-bundle-missing", "serve --port 0 --bundle {bad}/nope", "Path '", "serve --help`)", exit_code=2),
    case(
        "serve-not-a-bundle",
        "serve --port 0 --bundle {good}",
        "good.tsv is not a bundle",
        "written by `registry export`",
    ),
    case(
        "serve-max-batch-size-zero",
        "serve --port 0 --max-batch-size 0",
        "0 is not in the range x>=1",
        "serve --help`)",
        exit_code=2,
    ),
    # --- init
    case("init-twice", "init --base {base}", "already has a base", "use another --home to start a new one"),
    case(
        "init-base-missing",
        "--home {fresh} --db sqlite:///{fresh}/registry.db --store {fresh}/artifacts init --base {bad}/nope",
        "cannot load base checkpoint",
        "pass a directory with config.json and weights, or a hub id",
    ),
    case(
        "init-base-garbage",
        "--home {fresh} --db sqlite:///{fresh}/registry.db --store {fresh}/artifacts init --base {bad}",
        "cannot load base checkpoint",
        "pass a directory with config.json and weights, or a hub id",
    ),
    # --- a registry that is not there
    *(
        case(
            f"no-registry-{args.split()[0]}",
            f"--home {{fresh}} --db sqlite:///{{fresh}}/registry.db {args}",
            "no registry at",
            "run `registry init --base PATH_OR_HUB_ID` first",
        )
        for args in ("list", "verify", "runs", "add-task x --data {good}", "eval x", "db upgrade")
    ),
    # --- a database at a newer schema: every command refuses it, nothing is migrated
    *(
        case(
            f"newer-schema-{args.split()[0]}{'-' + args.split()[1] if args.startswith('db') else ''}",
            args,
            "registry schema is at ffff9999, newer than this code",
            "upgrade adapter-registry",
            "newer_schema",
        )
        for args in (
            "list",
            "show sentiment",
            "history",
            "runs",
            "verify",
            "verify --prune",
            "add-task newtask --data {good}",
            "eval sentiment",
            "init --base {base}",
            "db upgrade",
            "export --output {fresh}/bundle",
            "predict --task sentiment hello",
            "promote sentiment --version 1",
            "retire sentiment",
            "restore sentiment",
            "add-task sentiment --new-version --data {good}",
            "serve --port 0",
        )
    ),
    # --- an unreachable PostgreSQL server
    *(
        case(
            f"unreachable-{args.split()[0]}{'-' + args.split()[1] if args.startswith('db') else ''}",
            f"--db {UNREACHABLE} {args}",
            f"cannot open database {UNREACHABLE}",
            "check --db / REGISTRY_DB_URL",
        )
        for args in (
            "list",
            "show sentiment",
            "history",
            "runs",
            "verify",
            "add-task newtask --data {good}",
            "eval sentiment",
            "init --base {base}",
            "db current",
            "db upgrade",
            "export --output {fresh}/bundle",
            "predict --task sentiment hello",
            "promote sentiment --version 1",
            "retire sentiment",
            "serve --port 0",
        )
    ),
]


BAD_FILES = sorted(
    [
        "nothing",
        "unreadable.tsv",
        "empty.tsv",
        "header.tsv",
        "nolabel.tsv",
        "notext.tsv",
        "ragged.tsv",
        "nan.tsv",
        "blank.tsv",
        "oneclass.tsv",
        "words.tsv",
        "latin1.tsv",
        "huge.tsv",
        "data.txt",
        "config.json",
        "fifo",
        "hole.tsv",
        "holes.tsv",
        "stray.tsv",
    ]
)


def sentences(n: int, seed: int, labels=(0, 1)) -> list[str]:
    rng = random.Random(seed)
    words = "good great love very bad awful hate not the a this movie".split()
    return [f"{' '.join(rng.choices(words, k=6))}\t{labels[i % len(labels)]}" for i in range(n)]


def write_files(bad: Path) -> Path:
    """Every bad file the table names, and one good data file."""
    bad.mkdir(parents=True)
    header = "sentence\tlabel"
    good = bad.parent / "good.tsv"
    good.write_text("\n".join([header, *sentences(40, 0)]) + "\n")
    (bad / "nothing").mkdir()
    (bad / "nothing" / "readme.md").write_text("no data here\n")
    (bad / "unreadable.tsv").write_text(good.read_text())
    (bad / "empty.tsv").write_bytes(b"")
    (bad / "header.tsv").write_text(header + "\n")
    (bad / "nolabel.tsv").write_text("\n".join(["sentence", *(s.split("\t")[0] for s in sentences(30, 1))]) + "\n")
    (bad / "notext.tsv").write_text("\n".join(["id\tlabel", *(f"{i}\t{i % 2}" for i in range(30))]) + "\n")
    (bad / "ragged.tsv").write_text("\n".join([header, *sentences(30, 2), "one\ttoo\tmany"]) + "\n")
    (bad / "nan.tsv").write_text("\n".join([header, *sentences(30, 3, labels=("NaN", 1))]) + "\n")
    blank = sentences(30, 4)
    blank[7] = blank[7].split("\t")[0] + "\t"
    (bad / "blank.tsv").write_text("\n".join([header, *blank]) + "\n")
    hole = sentences(30, 9)
    hole[2] = "\t" + hole[2].split("\t")[1]
    (bad / "hole.tsv").write_text("\n".join([header, *hole]) + "\n")
    holes = sentences(30, 10)
    for i in (0, 10, 20):
        holes[i] = "\t" + holes[i].split("\t")[1]
    (bad / "holes.tsv").write_text("\n".join([header, *holes]) + "\n")
    stray = sentences(30, 11)
    stray[4] = stray[4].split("\t")[0] + "\tinf"
    (bad / "stray.tsv").write_text("\n".join([header, *stray]) + "\n")
    (bad / "oneclass.tsv").write_text("\n".join([header, *sentences(30, 5, labels=(1,))]) + "\n")
    (bad / "words.tsv").write_text("\n".join([header, *sentences(30, 6, labels=("pos", "neg"))]) + "\n")
    (bad / "latin1.tsv").write_bytes(
        ("\n".join([header, *sentences(30, 7), "un film très bon\t1"]) + "\n").encode("latin-1")
    )
    (bad / "huge.tsv").write_text("\n".join([header, *sentences(30, 8), "a" * 300_000 + "\t1"]) + "\n")
    (bad / "data.txt").write_text("some prose\nwith neither tabs nor commas\n")
    (bad / "config.json").write_text("{not json")
    os.mkfifo(bad / "fifo")
    return good


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def prepared(request, tmp_path_factory, tiny_base, pg_skip_reason):
    """One registry per dialect with two ready tasks, 'sentiment' (versions 1 and 2) and 'second', and the files
    the table needs."""
    root = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    home = root / "home"
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'registry.db'}"
    else:
        if pg_skip_reason:
            pytest.skip(pg_skip_reason)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with create_engine(PG_URL).begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    settings = Settings(home=home, db_url=url, store_url=str(home / "artifacts"))
    env = {"REGISTRY_HOME": str(home), "REGISTRY_DB_URL": url, "REGISTRY_STORE": settings.store_url}
    good = write_files(root / "bad")
    runner = CliRunner()
    for args in (
        ["init", "--base", str(tiny_base)],
        ["add-task", "sentiment", "--data", str(good), "--epochs", "1"],
        ["add-task", "sentiment", "--new-version", "--promote", "--data", str(good), "--epochs", "1", "--seed", "1"],
        ["add-task", "second", "--data", str(good), "--epochs", "1"],
        ["eval", "sentiment"],  # eval once, so the token cache is there before any row runs
        ["export", "--output", str(root / "bundles" / "good")],
    ):
        result = runner.invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    write_bad_bundles(root / "bundles" / "good", root / "bundles", marker=root / "marker")
    yield SimpleNamespace(settings=settings, env=env, runner=runner, marker=root / "marker",
                          paths={"bad": root / "bad", "good": good, "base": tiny_base, "fresh": root / "fresh",
                                 "bundles": root / "bundles", "home": home, "root": root})
    if schema:
        engine = create_engine(PG_URL)
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@contextlib.contextmanager
def unreadable(prepared, monkeypatch):
    path = prepared.paths["bad"] / "unreadable.tsv"
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: refuse it the way the kernel would refuse anyone else
        real = Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    try:
        yield
    finally:
        path.chmod(0o644)


@contextlib.contextmanager
def no_cuda(prepared, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield


def adapter_path(prepared) -> Path:
    engine = create_engine(prepared.settings.db_url)
    with engine.connect() as connection:
        sha = connection.execute(text("SELECT adapter_sha256 FROM tasks WHERE name = 'sentiment'")).scalar_one()
    engine.dispose()
    return Path(prepared.settings.store_url, sha[:2], sha)


@contextlib.contextmanager
def tampered(prepared, monkeypatch):
    path = adapter_path(prepared)
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one flipped bit, same size
    try:
        yield
    finally:
        path.write_bytes(original)


@contextlib.contextmanager
def adapter_missing(prepared, monkeypatch):
    path = adapter_path(prepared)
    moved = path.with_name("moved-away")
    path.rename(moved)
    try:
        yield
    finally:
        moved.rename(path)


@contextlib.contextmanager
def newer_schema(prepared, monkeypatch):
    engine = db.make_engine(prepared.settings.db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{db.head_revision()}'")
        engine.dispose()


@contextlib.contextmanager
def retired(prepared, monkeypatch):
    from registry.catalog import lifecycle
    from registry.storage.core import open_registry

    registry = open_registry(prepared.settings)
    lifecycle.retire(registry, "second")
    try:
        yield
    finally:
        lifecycle.restore(registry, "second")
        registry.close()


@contextlib.contextmanager
def user_tar(prepared, monkeypatch):
    """A user's own .tar where the bundle would go: --force must not replace it."""
    path = prepared.paths["bad"] / "data.txt.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(prepared.paths["bad"] / "data.txt", arcname="data.txt")
    before = path.read_bytes()
    try:
        yield
        assert path.read_bytes() == before
    finally:
        path.unlink()


def environment(**variables: str):
    """A setup that sets environment variables for the command."""
    @contextlib.contextmanager
    def setup(prepared, monkeypatch):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        yield

    return setup


SETUPS = {"stale_after_soon": environment(REGISTRY_STALE_AFTER_SECONDS="soon"),
          "stale_after_20": environment(REGISTRY_STALE_AFTER_SECONDS="20"),
          "heartbeat_negative": environment(REGISTRY_HEARTBEAT_SECONDS="-1"),
          "retired": retired, "user_tar": user_tar, "unreadable": unreadable, "no_cuda": no_cuda, "tampered": tampered,
          "adapter_missing": adapter_missing,
          "newer_schema": newer_schema}


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_bad_input(prepared, row, monkeypatch):
    args = [arg.format(**prepared.paths) for arg in row.args]
    fresh = prepared.paths["fresh"]
    with SETUPS[row.setup](prepared, monkeypatch) if row.setup else contextlib.nullcontext():
        before = snapshot(prepared.settings)
        result = prepared.runner.invoke(cli, args, env=prepared.env)
        line = one_line_error(result, row.exit_code)
        assert line.startswith("Error: ") and row.problem in line and row.todo in line, line
        assert snapshot(prepared.settings) == before
        if row.exit_code == 1:  # --debug: the traceback instead of the line; still nothing changed
            debug = prepared.runner.invoke(cli, ["--debug", *args], env=prepared.env)
            assert debug.exit_code == 1 and debug.exception is not None and not isinstance(debug.exception, SystemExit)
            assert snapshot(prepared.settings) == before
    assert not fresh.exists()  # rows pointed at another home created nothing there
    assert not prepared.marker.exists()  # no code shipped in a bundle or checkpoint ran
    assert sorted(p.name for p in prepared.paths["bad"].iterdir()) == BAD_FILES  # the user's files are all there
    shutil.rmtree(fresh, ignore_errors=True)
