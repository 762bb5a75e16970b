""""unexpected" is a bug, found by a machine: Hypothesis drives every command of the real CLI in-process.

Each command gets arguments and options drawn from strategies that reach for the edges: numbers at their
extremes and past them, odd paths (devices, missing directories, a `?` in a name, a pickled checkpoint),
odd database and store URLs (unknown dialects, not URLs at all, read-only filesystems, an S3 endpoint that
is down). Whatever it draws, the command must succeed, or exit != 0 with exactly one line on stderr that is
not "unexpected …" and no traceback. The registry is a real SQLite one on the tiny base, with a trained task.

Budget: FUZZ_EXAMPLES examples per command (`make test`: a few; `make fuzz`: many). Nothing here deletes
outside the test's directory: `verify --prune` is not drawn, and every path written to is under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from registry.cli.main import cli
from tests.helpers import write_pickled_copy, write_task_data

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_base) -> dict:
    """A registry with one trained task, and the odd files and directories the strategies point at."""
    root = tmp_path_factory.mktemp("fuzz")
    data = write_task_data(root / "data")
    pickled = write_pickled_copy(Path(tiny_base), root / "pickled-base")
    (root / "garbage.tsv").write_bytes(b"\xff\xfe\x00garbage\tx\n\x00\x00")
    (root / "wrong-columns").mkdir()
    (root / "wrong-columns" / "train.tsv").write_text("a\tb\nx\ty\nz\tw\n")
    (root / "wrong-columns" / "dev.tsv").write_text("a\tb\nx\ty\nz\tw\n")
    (root / "rows.jsonl").write_text('{"task": "sentiment", "text": "good"}\n{"text": 3}\n')
    (root / "out").mkdir()
    env = {"REGISTRY_HOME": str(root / "home"), "REGISTRY_DB_URL": "", "REGISTRY_STORE": "",
           "AWS_ENDPOINT_URL": DOWN, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_MAX_ATTEMPTS": "1", "HF_HUB_OFFLINE": "1"}
    runner = CliRunner()
    for args in (["init", "--base", str(tiny_base)],
                 ["add-task", "sentiment", "--data", str(data / "sentiment"), "--epochs", "1", "-q",
                  "--adapter-size", "4", "--max-length", "12"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "tiny": Path(tiny_base), "pickled": pickled, "env": env}


def paths(place: dict) -> st.SearchStrategy[str]:
    """Existing, missing and odd paths; every one that could be written to lies under the test's directory."""
    root = place["root"]
    return st.sampled_from([
        "", ".", "/", "/dev/null", "/dev/full", "/proc/version", str(root / "missing" / "deeper"),
        str(root / "a?b#c%41"), str(root / ("x" * 300)), str(root / "garbage.tsv"), str(root / "rows.jsonl"),
        str(root / "wrong-columns"), str(place["data"] / "sentiment"), str(place["data"] / "pairs"),
        str(place["data"] / "sentiment" / "train.tsv"), str(root / "out"), str(root / "out" / "file.png"),
        str(root / "out" / "plot.txt"), str(place["tiny"]), str(place["pickled"]), "hf:nobody/nothing",
        "bert-base-uncased", "-", "~nobody/x", "a\u00a0b", "\x1b[31mred",
    ])


def numbers() -> st.SearchStrategy[str]:
    """Numbers at and past every edge, as a command line spells them, and some that are not numbers."""
    return st.one_of(
        st.sampled_from(["0", "-1", "1", "2", "8", "64", "1e300", "-1e300", "1e-320", "nan", "inf", "-inf",
                         "99999999999999999999", str(2**31), str(2**63), "100000000", "0x10", "1_000", "", "x"]),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


def urls(place: dict) -> st.SearchStrategy[str]:
    """Database and store URLs: unknown dialects, not URLs, read-only or archive filesystems, servers down."""
    root = place["root"]
    return st.sampled_from([
        "mysql://x", "notaurl", "sqlite://", "sqlite:///", "sqlite:////dev/null", f"sqlite:///{root}/nope/x.db",
        f"sqlite:///{root}/garbage.tsv", "postgresql://nobody@127.0.0.1:9/x", "postgresql+nodriver://x/y",
        "foo://x", "gs://bucket", "zip://x", "/dev/null", f"{DOWN}/store", "s3://down-bucket/x", "memory://m",
        str(root / "other-store"), "file:///dev/null", "tar://x::file:///dev/null", "",
    ])


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["sentiment", "nope", "", "-x", "A", "a" * 300, "a/b", "..", "ok-name"]),
                     st.text(max_size=12))


def globals_(place: dict) -> st.SearchStrategy[list[str]]:
    """Usually the test's registry; sometimes an odd --home, --db or --store in front of the command."""
    odd = st.one_of(st.tuples(st.just("--home"), paths(place)), st.tuples(st.just("--db"), urls(place)),
                    st.tuples(st.just("--store"), urls(place)))
    return st.one_of(st.just([]), st.lists(odd, max_size=2).map(lambda pairs: [x for pair in pairs for x in pair]))


def options(**choices: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Any subset of the options, each with a drawn value (a flag when its strategy is None)."""
    def spelled(name: str, strategy) -> st.SearchStrategy[list[str]]:
        option = "--" + name.rstrip("_").replace("_", "-")
        return st.just([option]) if strategy is None else strategy.map(lambda value: [option, value])

    drawn = [st.one_of(st.just([]), spelled(name, strategy)) for name, strategy in choices.items()]
    return st.tuples(*drawn).map(lambda parts: [x for part in parts for x in part])


def command(name: str, place: dict) -> st.SearchStrategy[list[str]]:
    """The argument lists of one command."""
    path, number, text = paths(place), numbers(), names()
    out = st.sampled_from([str(place["root"] / "out" / "b"), str(place["root"] / "out" / "b.tar"),
                           str(place["root"] / "missing" / "b"), "/dev/null", str(place["root"] / "out")])
    tasks = st.sampled_from(["all", "sentiment", "nope", "", ",", "sentiment,sentiment"])
    table = {
        "init": st.tuples(st.just(["init", "--base"]), path.map(lambda p: [p]), options(name=text, json=None)),
        "db": st.tuples(st.sampled_from([["db", "current"], ["db", "upgrade"], ["db"], ["db", "nope"]])),
        "list": st.tuples(st.just(["list"]), options(all=None, json=None)),
        "show": st.tuples(st.just(["show"]), text.map(lambda n: [n]), options(json=None)),
        "history": st.tuples(st.just(["history"]), st.one_of(st.just([]), text.map(lambda n: [n])),
                             options(matrix=None, plot=path, json=None)),
        "add-task": st.tuples(st.just(["add-task"]), text.map(lambda n: [n, "-q", "--max-train-samples", "8"]),
                              options(data=path, epochs=st.sampled_from(["0", "1", "-1", "99999999999999999999",
                                                                          "x"]),
                                      lr=number, batch_size=number, adapter_size=number, max_length=number,
                                      seed=number, strict=None, init_from=text, new_version=None)),
        "eval": st.tuples(st.just(["eval"]), text.map(lambda n: [n, "-q"]), options(data=path, json=None)),
        "predict": st.tuples(st.just(["predict"]), st.lists(text, max_size=3),
                             options(task=text, input=path, bundle=path, batch_size=number, json=None)),
        "export": st.tuples(st.just(["export"]), options(output=out, tasks=tasks, archive=None, force=None,
                                                          dtype=st.sampled_from(["float16", "float64"]))),
        "import": st.tuples(st.just(["import"]), st.one_of(path, out).map(lambda p: [p])),
        "verify": st.tuples(st.just(["verify"]), options(json=None)),
        "runs": st.tuples(st.just(["runs"]), st.one_of(st.just([]), text.map(lambda n: [n])),
                          options(sweep=None, json=None)),
        "lifecycle": st.tuples(st.sampled_from([["retire"], ["restore"], ["promote", "--version", "1"],
                                                ["promote", "--version", "99999999999999999999"]]),
                               text.map(lambda n: [n]), options(why=text)),
        "serve": st.tuples(st.just(["serve"]),  # only hosts that cannot be bound: a server that starts never ends
                           st.sampled_from(["999.1.1.1", "::zz", "host name", "256.0.0.1"])
                           .map(lambda host: ["--host", host]),
                           options(port=st.sampled_from(["-1", "65536", "x", "0"]), max_wait_ms=number,
                                   grace_seconds=number, read_seconds=number, max_inputs=number, token=text)),
    }
    return st.tuples(globals_(place), table[name].map(lambda parts: [x for part in parts for x in part])) \
        .map(lambda pair: [*pair[0], *pair[1]])


def acceptable(args: list[str], result) -> None:
    """Success, or exit != 0 ending in one `Error: …` line that is neither "unexpected" nor a traceback.

    Lines a command printed before it failed (progress, `runs --sweep`'s count) may precede it; `verify` reports
    the problems it finds on stdout and exits 1.
    """
    assert not (result.exception and not isinstance(result.exception, SystemExit)), (args, result.exception)
    if result.exit_code == 0:
        return
    assert "Traceback" not in result.output, (args, result.output)
    if "verify" in args and not result.stderr and result.stdout:
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], (args, result.stderr)
    assert "unexpected" not in errors[0], (args, errors[0])


REGISTRY = [str(Path(sys.executable).with_name("registry"))]


@pytest.mark.parametrize("args", [["list", "--all"], ["history"], ["runs"], ["show", "sentiment"], ["predict", "--task",
                                                                                              "sentiment", "good"]])
def test_a_reader_that_closes_stdout_early_is_normal_use(args, place):
    """`registry list | head -1`: the reader goes; the command exits 0, quietly."""
    process = subprocess.Popen([*REGISTRY, *args], env={**os.environ, **place["env"]}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes anything
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 0 and stderr == "", (process.returncode, stderr)


COMMANDS = ["init", "db", "list", "show", "history", "add-task", "eval", "predict", "export", "import", "verify",
            "runs", "lifecycle", "serve"]


@pytest.mark.parametrize("name", COMMANDS)
def test_no_command_ends_in_unexpected(name, place, monkeypatch):
    work = place["root"] / "cwd"  # relative paths (`--home .`, `--store notaurl`) land here, not in the checkout
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    runner = CliRunner()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 50,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(args=command(name, place))
    def run(args: list[str]) -> None:
        acceptable(args, runner.invoke(cli, args, env=place["env"]))

    run()


@contextmanager
def tmpfs(mount: Path, options: str):
    """A tmpfs mounted at `mount` with `options` (where root may; the test skips otherwise), unmounted at the end."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs."""
    with tmpfs(tmp_path / "full", "size=256k") as mount:
        yield mount


def test_a_full_disk_is_named_as_such(full_disk, place):
    try:  # fill it to the last block
        with open(full_disk / "ballast", "wb", buffering=0) as ballast:
            while True:
                ballast.write(b"\0" * 4096)
    except OSError:
        pass
    runner = CliRunner()
    env = {**place["env"], "REGISTRY_HOME": str(full_disk / "home")}
    result = runner.invoke(cli, ["init", "--base", str(place["tiny"])], env=env)
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "unexpected" not in line and ("full" in line or "space" in line), line
    plot = runner.invoke(cli, ["history", "--plot", str(full_disk / "plot.png")], env=place["env"])
    acceptable(["history", "--plot"], plot)


def test_a_read_only_home_is_named_as_such(tmp_path, place):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        env = {**place["env"], "REGISTRY_HOME": str(mount / "home")}
        result = CliRunner().invoke(cli, ["init", "--base", str(place["tiny"])], env=env)
        assert result.exit_code == 1, result.output
        line = result.stderr.strip()
        assert "\n" not in line and "unexpected" not in line and "check --db" not in line, line
        assert "Read-only file system" in line or "read-only" in line, line
