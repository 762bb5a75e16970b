"""The public API (`from registry import Registry`) in-process, on both dialects: create and open, add (the tiny
BERT), versions, transfer, export and import, predictors, and errors of the documented kinds with the CLI's
one-line messages. Real training, real files."""

from __future__ import annotations

import json
import logging
import pytest
from click.testing import CliRunner

from registry import (Auto, Bundle, FromTask, Matrix, Registry, Rows, Scratch, Task, TaskDetail, TaskVersion,
                      TrainConfig)
from registry.cli.main import cli
from registry.errors import (AlreadyInitialised, BundleError, DataError, NotInitialised, OptionError, TaskExists,
                             UnknownTask, VersionError)
from registry.results import plain
from tests.helpers import snapshot, write_task_data

FAST = TrainConfig(epochs=1, batch_size=16, lr=3e-3)


def where(settings) -> dict:
    return {"db": settings.db_url, "store": settings.store_url}


@pytest.fixture
def reg(settings, tiny_base):
    """A registry on the tiny BERT, created through the API."""
    with Registry.create(settings.home, base=str(tiny_base), **where(settings)) as created:
        yield created


@pytest.fixture
def data(tmp_path):
    return write_task_data(tmp_path / "data")


@pytest.fixture
def two_tasks(reg, data):
    """`reg` holding `sentiment` and `pairs`."""
    reg.add_task("sentiment", str(data / "sentiment"), config=FAST)
    reg.add_task("pairs", str(data / "pairs"), config=FAST)
    return reg


def cli_json(settings, *args: str):
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
           "REGISTRY_STORE": settings.store_url}
    result = CliRunner().invoke(cli, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_open_and_read_what_the_cli_reads(settings, two_tasks):
    again = Registry.open(settings.home, **where(settings))
    tasks = again.tasks()
    assert isinstance(tasks, Rows) and all(isinstance(task, Task) for task in tasks)
    assert [(t.position, t.name, t.version, t.status) for t in tasks] == [(1, "sentiment", 1, "ready"),
                                                                          (2, "pairs", 1, "ready")]
    assert plain(tasks) == cli_json(settings, "list")  # the same rows the CLI prints
    detail = again.task("pairs")
    assert isinstance(detail, TaskDetail) and detail.text_columns == ("sentence1", "sentence2")
    assert [(v.version, v.current) for v in detail.versions] == [(1, True)]
    assert detail.runs[0].init_from is None and detail.runs[0].status == "succeeded"
    assert plain(detail) == cli_json(settings, "show", "pairs")
    history = again.history("sentiment")
    assert {(s.task, s.split, s.metric) for s in history} == {("sentiment", "train", "loss"),
                                                              ("sentiment", "validation", "accuracy")}
    assert plain(again.history()) == cli_json(settings, "history")
    matrix = again.matrix()
    assert isinstance(matrix, Matrix) and matrix.tasks == ("sentiment", "pairs") and matrix.matrix[1][0] is None
    assert plain(matrix) == cli_json(settings, "history", "--matrix")
    assert again.base().parameters > 0 and again.base().layers == 2
    with pytest.raises(AttributeError):  # results are frozen
        tasks[0].name = "other"


def test_create_twice_and_open_nothing_are_the_cli_errors(settings, reg, tiny_base, tmp_path):
    with pytest.raises(AlreadyInitialised, match="already has a base: use another --home"):
        Registry.create(settings.home, base=str(tiny_base), **where(settings))
    with pytest.raises(NotInitialised, match=r"^no registry at .*: run `registry init --base PATH_OR_HUB_ID` first$"):
        Registry.open(tmp_path / "none")


def test_add_logs_what_it_inferred_and_returns_the_published_version(reg, data, caplog):
    with caplog.at_level(logging.INFO, logger="registry"):
        version = reg.add_task("sentiment", str(data / "sentiment"), config=FAST)
    assert isinstance(version, TaskVersion)
    assert (version.name, version.published_version, version.published_current, version.why) == (
        "sentiment", 1, True, "first version")
    said = [record.getMessage() for record in caplog.records if record.name == "registry"]
    assert any(line.startswith("run 1: lr=0.003 adapter_size=64 from scratch best accuracy=") for line in said), said


def test_versions_promote_retire_restore(reg, data):
    reg.add_task("sentiment", str(data / "sentiment"), config=FAST)
    second = reg.add_task("sentiment", str(data / "sentiment"), config=FAST, new_version=True, promote=True)
    assert (second.published_version, second.published_current, second.version) == (2, True, 2)
    promoted = reg.promote("sentiment", 1, why="roll back")
    assert (promoted.version, promoted.previous, promoted.why) == (1, 2, "roll back")
    assert [(v.version, v.current) for v in reg.task("sentiment").versions] == [(1, True), (2, False)]
    with pytest.raises(VersionError, match="^version 1 of task 'sentiment' is already current: nothing to promote$"):
        reg.promote("sentiment", 1)
    assert reg.retire("sentiment", why="done").why == "done"
    assert reg.tasks() == [] and [t.name for t in reg.tasks(include_retired=True)] == ["sentiment"]
    with pytest.raises(UnknownTask, match="^task 'sentiment' is retired: `registry restore sentiment` brings it back$"):
        reg.evaluate("sentiment")
    assert reg.restore("sentiment").retired_at is None
    assert [e.action for e in reg.task("sentiment").events][-2:] == ["retire", "restore"]


def test_transfer_from_a_task_and_auto(reg, data):
    reg.add_task("a", str(data / "sentiment"), config=FAST)
    b = reg.add_task("b", str(data / "sentiment"), config=FAST, init_from=FromTask("a"), compare_scratch=True)
    runs = reg.task("b").runs
    assert [(r.init_from.task if r.init_from else None) for r in runs] == ["a", None]
    assert runs[0].selection == {"requested": "a", "chosen": "a"}
    assert b.init_from in ("a", None)  # the better of the two runs is published
    assert reg.matrix().fwt[1] is not None
    reg.add_task("c", str(data / "sentiment"), config=FAST, init_from=Auto())
    assert reg.task("c").runs[0].selection["requested"] == "auto"


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"promote": True}, OptionError, "--promote needs --new-version (a new task's first version is always current)"),
    ({"compare_scratch": True}, OptionError,
     "--compare-scratch needs --init-from auto or TASK (the run is already from scratch)"),
    ({"init_from": "auto"}, OptionError, "init_from='auto': pass Scratch(), Auto() or FromTask(name)"),
    ({"init_from": Auto(shortlist=0)}, OptionError,
     "--shortlist 0: give 1 or more (how many earlier tasks get a trial)"),
    ({"init_from": FromTask("nosuch")}, UnknownTask, "no ready task named 'nosuch'; known tasks: (none)"),
    ({"new_version": True}, UnknownTask,
     "--new-version: no ready task named 'b': drop --new-version to add it as a new task"),
])
def test_refused_options_change_nothing(settings, reg, data, kwargs, error, message):
    before = snapshot(settings)
    with pytest.raises(error) as raised:
        reg.add_task("b", str(data / "sentiment"), config=FAST, **kwargs)
    assert str(raised.value) == message
    assert snapshot(settings) == before


def test_api_and_cli_refuse_alike(settings, reg, data):
    reg.add_task("a", str(data / "sentiment"), config=FAST)
    with pytest.raises(TaskExists) as raised:
        reg.add_task("a", str(data / "sentiment"), config=FAST)
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
           "REGISTRY_STORE": settings.store_url}
    result = CliRunner().invoke(cli, ["add-task", "a", "--data", str(data / "sentiment")], env=env)
    assert result.exit_code == 1 and result.stderr.strip() == f"Error: {raised.value}"
    with pytest.raises(DataError, match="no such|not found|cannot"):
        reg.add_task("b", str(data / "nothing-here"), config=FAST)


def test_export_import_and_predict(settings, two_tasks, tmp_path):
    exported = two_tasks.export(None, tmp_path / "bundle.tar", archive=True)
    assert exported.tasks == ("sentiment", "pairs") and exported.output.endswith("bundle.tar") and exported.bundle
    from_bundle = Bundle.open(exported.output).predictor()
    from_registry = two_tasks.predictor(["sentiment", "pairs"])
    for predictor in (from_bundle, from_registry):
        one = predictor.predict("sentiment", ["good great film"])
        assert one[0].task == "sentiment" and one[0].label in ("positive", "negative")
        mixed = predictor.predict_mixed([("pairs", ("good film", "great movie")), ("sentiment", "awful")])
        assert [p.task for p in mixed] == ["pairs", "sentiment"]
    assert from_bundle.predict("sentiment", ["a b c"]) == from_registry.predict("sentiment", ["a b c"])

    home = tmp_path / "imported"
    imported = Registry.import_bundle(exported.output, home=home)
    assert imported.initialised and [t.name for t in imported.tasks] == ["sentiment", "pairs"]
    with Registry.open(home) as copy:
        assert [t.name for t in copy.tasks()] == ["sentiment", "pairs"]
        with pytest.raises(TaskExists, match="already has task\\(s\\) 'sentiment', 'pairs'"):
            copy.import_bundle(exported.output)
    with pytest.raises(BundleError, match="^no bundle at"):
        Bundle.open(tmp_path / "nothing.tar")


def test_runs_verify_and_to_pandas(reg, data):
    reg.add_task("a", str(data / "sentiment"), config=FAST)
    runs = reg.runs("a")
    assert [(r.run, r.task, r.status, r.from_) for r in runs] == [(1, "a", "succeeded", "scratch")]
    assert plain(runs)[0]["from"] == "scratch"
    report = reg.verify()
    assert report.ok and report.problems == () and report.checked["tasks"] == 1
    pandas = pytest.importorskip("pandas")
    frame = reg.tasks().to_pandas()
    assert isinstance(frame, pandas.DataFrame) and list(frame["name"]) == ["a"]
    assert list(reg.matrix().to_pandas().columns) == ["a"]


def test_typed_init_from_values():
    from registry.options import parse_init_from

    assert parse_init_from("none") == Scratch() and parse_init_from("auto") == Auto()
    assert parse_init_from("sst2") == FromTask("sst2") and str(FromTask("sst2")) == "sst2"
