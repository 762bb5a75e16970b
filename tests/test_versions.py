"""Task versions on both dialects: --new-version, the current version that list/export/predict follow,
candidates, promote (rollback included), retire and restore. Real training on the tiny BERT."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, text, update

from registry.catalog.queries import ready_tasks
from registry.storage import db
from registry.catalog import lifecycle
from registry.storage.core import open_registry
from registry.errors import RegistryError, RetireError
from registry.storage.models import Task
from tests.helpers import one_line_error, snapshot


def rows(n: int, ones: int, seed: int) -> list[str]:
    """n labelled sentences, `ones` of them labelled 1."""
    rng = random.Random(seed)
    words = "good great love very bad awful hate not the a this movie".split()
    return [f"{' '.join(rng.choices(words, k=6))}\t{int(i < ones)}" for i in range(n)]


def write_task(directory: Path, majority: int) -> Path:
    """Train data where 85% of the labels are `majority`, and dev data that is mostly 1s (the same for every call).

    Even a model that learns nothing else learns the majority label: trained on majority 1 it scores
    0.75 accuracy on the dev data, on majority 0 it scores 0.25: a worse version, by construction.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.tsv").write_text("\n".join(["sentence\tlabel", *rows(120, 102 if majority else 18, 0)]) + "\n")
    (directory / "dev.tsv").write_text("\n".join(["sentence\tlabel", *rows(40, 30, 1)]) + "\n")
    return directory


def add(run_cli, name: str, data: Path, *extra: str):
    result = run_cli("add-task", name, "--data", str(data), "--batch-size", "16", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def listed(run_cli, *extra: str) -> dict[str, dict]:
    return {task["name"]: task for task in json.loads(run_cli("list", "--json", *extra).stdout)}


def versions(run_cli, name: str) -> list[tuple]:
    shown = json.loads(run_cli("show", name, "--json").stdout)
    return [(v["version"], v["current"], v["adapter_sha256"]) for v in shown["versions"]]


def served(settings) -> dict[str, str]:
    """The adapter each task is served with: what export, predict and serve read (catalog.queries.ready_tasks)."""
    registry = open_registry(settings)
    with registry.read() as session:
        rows = ready_tasks(session, None)
    registry.close()
    return {row.name: row.adapter_sha256 for row in rows}


@pytest.fixture
def two_tasks(run_cli, tiny_base, tmp_path, settings):
    """`sentiment` and `other`; data for a version of `sentiment` as good as its first, and for a worse one."""
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    good, worse = write_task(tmp_path / "good", majority=1), write_task(tmp_path / "worse", majority=0)
    first, _ = add(run_cli, "sentiment", good, "--metric", "accuracy")
    assert first["score"] == 0.75
    add(run_cli, "other", write_task(tmp_path / "other", majority=1))
    return SimpleNamespace(good=good, worse=worse, first=first)


def test_new_version_keeps_the_position_and_export_follows_the_current_one(run_cli, settings, two_tasks, tmp_path):
    data, first = two_tasks.good, two_tasks.first
    other, other_adapter = listed(run_cli)["other"], served(settings)["other"]
    other_files = {p.name: p.read_bytes() for p in Path(settings.store_url).rglob("*") if p.is_file()}

    # the same data, seed and settings: the same adapter, so at least as good on the same validation data: current
    second, printed = add(run_cli, "sentiment", data, "--new-version")
    assert (second["published_version"], second["published_current"], second["position"]) == (2, True, 1)
    assert f"new version {first['score']:.4f}, current version 1 {first['score']:.4f}" in printed
    assert "sentiment version 2 is current (at least as good: accuracy" in printed

    # a version that learned the wrong majority scores worse than the current one: a candidate; what is served stays
    third, printed = add(run_cli, "sentiment", two_tasks.worse, "--new-version")
    assert (third["published_version"], third["published_current"], third["version"]) == (3, False, 2)
    assert third["why"].startswith("candidate: worse than the current version: accuracy")
    assert "`registry promote sentiment --version 3` makes it current" in printed
    shown = versions(run_cli, "sentiment")
    assert [(v, current) for v, current, _ in shown] == [(1, False), (2, True), (3, False)]
    assert served(settings) == {"sentiment": shown[1][2], "other": other_adapter}

    # --promote makes a worse version current anyway, and says why
    fourth, _ = add(run_cli, "sentiment", two_tasks.worse, "--new-version", "--promote")
    assert (fourth["published_version"], fourth["published_current"]) == (4, True)
    assert fourth["why"].startswith("promoted with --promote (accuracy")
    adapter_4 = versions(run_cli, "sentiment")[3][2]
    assert served(settings)["sentiment"] == adapter_4
    # the log holds the versions that became current when published; the candidate (3) moved nothing
    assert [(action, version) for action, version, _, _ in events(run_cli, "sentiment")] == [
        ("publish", 1), ("publish", 2), ("publish", 4)]

    # the task kept its position; the other task and every file stored before are untouched
    now = listed(run_cli)
    assert [(t["name"], t["position"], t["version"]) for t in now.values()] == [("sentiment", 1, 4), ("other", 2, 1)]
    assert now["other"] == other
    files = {p.name: p.read_bytes() for p in Path(settings.store_url).rglob("*") if p.is_file()}
    assert {k: files[k] for k in other_files} == other_files

    # history shows every version's rows, and the evaluations of the current version each new one was compared with
    history = json.loads(run_cli("history", "sentiment", "--json").stdout)
    assert {h["version"] for h in history if h["run"] is not None} == {1, 2, 3, 4}
    evaluated = [(h["version"], h["tasks_present"]) for h in history if h["evaluation"] is not None]
    assert evaluated == [(1, 2), (2, 2), (2, 2)]

    # a bundle records each task's version and carries its current adapter
    assert run_cli("export", "--output", str(tmp_path / "bundle")).exit_code == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [(t["name"], t["version"], t["adapter_sha256"]) for t in manifest["tasks"]] == [
        ("sentiment", 4, adapter_4), ("other", 1, other_adapter)]

    # imported elsewhere, each task starts as version 1 there, saying where it came from
    home = tmp_path / "imported"
    elsewhere = ("--home", str(home), "--db", f"sqlite:///{home / 'registry.db'}", "--store", str(home / "artifacts"))
    result = run_cli(*elsewhere, "import", str(tmp_path / "bundle"), "--json")
    assert result.exit_code == 0, result.output
    assert [(t["name"], t["version"]) for t in json.loads(result.stdout)["tasks"]] == [("sentiment", 1), ("other", 1)]
    imported = json.loads(run_cli(*elsewhere, "show", "sentiment", "--json").stdout)
    assert [(v["version"], v["current"], v["adapter_sha256"], v["why"]) for v in imported["versions"]] == [
        (1, True, adapter_4, f"imported from {tmp_path / 'bundle'} (its version 4 there)")]


def events(run_cli, name: str) -> list[tuple]:
    """The moves of task `name`'s pointer, oldest first: (action, version, by, why), as `show --json` lists them."""
    shown = json.loads(run_cli("show", name, "--json").stdout)
    assert [e["at"] for e in shown["events"]] == sorted(e["at"] for e in shown["events"])
    return [(e["action"], e["version"], e["by"], e["why"]) for e in shown["events"]]


def test_promote_moves_the_pointer_back_and_forth_and_logs_every_move(run_cli, settings, two_tasks):
    first = two_tasks.first
    add(run_cli, "sentiment", two_tasks.worse, "--new-version", "--promote")
    (_, _, adapter_1), (_, _, adapter_2) = versions(run_cli, "sentiment")
    assert served(settings)["sentiment"] == adapter_2
    published = json.loads(run_cli("show", "sentiment", "--json").stdout)["versions"]

    why = "version 2 learned the wrong majority"
    result = run_cli("promote", "sentiment", "--version", "1", "--why", why, "--json")
    assert result.exit_code == 0, result.output
    promoted = json.loads(result.stdout)
    assert (promoted["version"], promoted["previous"], promoted["why"]) == (1, 2, why)
    assert promoted["promoted_by"] == lifecycle.who()
    assert served(settings)["sentiment"] == adapter_1
    row = listed(run_cli)["sentiment"]
    assert (row["version"], row["score"], row["position"]) == (1, first["score"], 1)
    shown = json.loads(run_cli("show", "sentiment", "--json").stdout)
    assert [(v["version"], v["current"]) for v in shown["versions"]] == [(1, True), (2, False)]
    assert shown["adapter_sha256"] == adapter_1 and shown["version"] == 1

    again = run_cli("promote", "sentiment", "--version", "2")  # forward again, with the default reason
    assert again.exit_code == 0, again.output
    assert served(settings)["sentiment"] == adapter_2
    assert "promoted from version 1 with `registry promote`" in again.stdout
    # every move is kept, the rollback's included; the versions themselves are as they were published
    me, shown = lifecycle.who(), json.loads(run_cli("show", "sentiment", "--json").stdout)
    assert events(run_cli, "sentiment") == [
        ("publish", 1, me, "first version"),
        ("publish", 2, me, published[1]["why"]),
        ("promote", 1, me, why),
        ("promote", 2, me, "promoted from version 1 with `registry promote`")]
    assert [{**v, "current": None} for v in shown["versions"]] == [{**v, "current": None} for v in published]
    printed = run_cli("show", "sentiment").stdout.splitlines()
    header = printed.index(next(line for line in printed if line.split() == ["at", "action", "version", "by", "why"]))
    assert [line.split()[1:3] for line in printed[header + 1:header + 5]] == [
        ["publish", "1"], ["publish", "2"], ["promote", "1"], ["promote", "2"]]
    assert run_cli("eval", "sentiment", "--json").exit_code == 0  # an evaluation scores the current version
    history = json.loads(run_cli("history", "sentiment", "--json").stdout)
    assert history[-1]["version"] == 2 and history[-1]["evaluation"] is not None


def test_a_version_that_lost_the_pointer_while_it_trained_stays_a_candidate(run_cli, settings, two_tasks):
    """Two new versions measured against version 1: once one is current, the other cannot overtake it unchecked."""
    data = two_tasks.good
    add(run_cli, "sentiment", data, "--new-version")  # version 2, current
    registry = open_registry(settings)
    with registry.read() as session:
        task = session.scalars(select(Task).where(Task.name == "sentiment")).one()
    release = lifecycle.Release(adapter_sha256=task.adapter_sha256, config_sha256=task.config_sha256, adapter_size=64,
                                score=task.score, trainable_params=task.trainable_params, data_source=str(data))
    published = lifecycle.publish(registry, [lifecycle.Publication(release=release, task_id=task.id, compared_with=1,
                                                                   why="at least as good")], [])
    registry.close()
    assert (published[0].version, published[0].current) == (3, False)
    assert published[0].why.startswith("candidate: it beat version 1, but version 2 became current while it trained")
    assert listed(run_cli)["sentiment"]["version"] == 2


def test_retire_hides_a_task_and_restore_brings_it_back(run_cli, settings, two_tasks, tmp_path):
    before = listed(run_cli)
    result = run_cli("retire", "other")
    assert result.exit_code == 0, result.output
    assert list(listed(run_cli)) == ["sentiment"]
    everything = listed(run_cli, "--all")
    assert list(everything) == ["sentiment", "other"] and everything["other"]["retired_at"]
    assert "retired_at" in run_cli("list", "--all").stdout.splitlines()[0]
    assert set(served(settings)) == {"sentiment"}
    assert run_cli("export", "--output", str(tmp_path / "bundle")).exit_code == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["sentiment"]
    for command in (("export", "--tasks", "other", "--output", str(tmp_path / "b2")),
                    ("predict", "--task", "other", "hi"), ("eval", "other")):
        assert one_line_error(run_cli(*command)) == (
            "Error: task 'other' is retired: `registry restore other` brings it back")
    shown = json.loads(run_cli("show", "other", "--json").stdout)  # its history stays readable
    assert shown["retired_at"] and [v["version"] for v in shown["versions"]] == [1]
    assert json.loads(run_cli("history", "other", "--json").stdout)

    assert run_cli("restore", "other", "--why", "still needed").exit_code == 0
    assert listed(run_cli) == before
    assert set(served(settings)) == {"sentiment", "other"}

    # retired again: every retirement and restoration stays in the log, with who, when and why
    retired = json.loads(run_cli("retire", "other", "--why", "replaced", "--json").stdout)
    assert (retired["by"], retired["why"]) == (lifecycle.who(), "replaced") and retired["retired_at"]
    me = lifecycle.who()
    assert events(run_cli, "other") == [("publish", 1, me, "first version"), ("retire", None, me, None),
                                        ("restore", None, me, "still needed"), ("retire", None, me, "replaced")]
    assert events(run_cli, "sentiment") == [("publish", 1, me, "first version")]


@pytest.mark.parametrize("action, retired_before, message", [
    ("retire", False, "task 'other' is already retired"), ("restore", True, "task 'other' is not retired")])
def test_a_retire_or_restore_that_waited_for_another_one_is_refused_and_logs_nothing(settings, two_tasks, action,
                                                                                      retired_before, message):
    """Another writer retires (restores) the task while this retire (restore) waits for it: one move, one event."""
    engine = db.make_engine(settings.db_url)
    registry = open_registry(settings)
    try:
        if retired_before:
            lifecycle.retire(registry, "other")
        with engine.connect() as other_writer, ThreadPoolExecutor(1) as pool:
            other_writer.execute(text("UPDATE tasks SET retired_at = :at WHERE name = 'other'"),
                                 {"at": None if retired_before else lifecycle.utcnow()})  # holds the row or the lock
            waiting = pool.submit(getattr(lifecycle, action), registry, "other")
            time.sleep(1)
            assert not waiting.done()
            other_writer.commit()
            with pytest.raises(RetireError, match=f"^{message}"):
                waiting.result(timeout=60)
        with engine.connect() as connection:
            logged = connection.execute(text("SELECT action FROM task_events WHERE task_id = "
                                             "(SELECT id FROM tasks WHERE name = 'other') ORDER BY id")).scalars().all()
        assert logged == ["publish", *(["retire"] if retired_before else [])]
    finally:
        registry.close()
        engine.dispose()


def test_read_commands_show_versions_as_tables(run_cli, two_tasks):
    add(run_cli, "sentiment", two_tasks.worse, "--new-version")
    shown = run_cli("show", "sentiment").stdout.splitlines()
    header = next(i for i, line in enumerate(shown) if line.split()[:2] == ["version", "current"])
    assert shown[header].split()[:3] == ["version", "current", "score"]
    assert [line.split()[:2] for line in shown[header + 1:header + 3]] == [["1", "current"], ["2", "candidate"]]
    assert run_cli("list").stdout.splitlines()[0].split()[:3] == ["position", "name", "version"]
    assert run_cli("history", "sentiment").stdout.splitlines()[0].split()[:2] == ["task", "version"]


def test_promote_and_retire_change_nothing_on_bad_input(run_cli, settings, two_tasks):
    before = snapshot(settings)
    assert one_line_error(run_cli("promote", "sentiment", "--version", "2")) == (
        "Error: task 'sentiment' has no version 2 (its versions: 1): pick one of them, see `registry show sentiment`")
    assert one_line_error(run_cli("restore", "sentiment")) == (
        "Error: task 'sentiment' is not retired: nothing to restore")
    assert snapshot(settings) == before


def test_verify_finds_a_task_that_does_not_carry_its_current_version(run_cli, settings, two_tasks):
    assert run_cli("verify").exit_code == 0
    registry = open_registry(settings)
    with registry.write() as session:
        session.execute(update(Task).where(Task.name == "other").values(score=0.5))
    registry.close()
    result = run_cli("verify")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "ready task 'other' does not carry the artifacts and score of its current version 1: "
        "the database was altered; restore it from a backup"]


def test_publish_that_keeps_losing_its_race_fails_with_one_line_and_changes_nothing(settings, two_tasks, monkeypatch):
    """The unique name refuses the insert on every attempt: publish gives up with a RegistryError, never a raw
    IntegrityError, and its transactions left nothing behind (add-task and import both publish through it)."""
    monkeypatch.setattr(lifecycle, "PUBLISH_ATTEMPTS", 3)
    registry = open_registry(settings)
    with registry.read() as session:
        task = session.scalars(select(Task).where(Task.name == "other")).one()
    release = lifecycle.Release(adapter_sha256=task.adapter_sha256, config_sha256=task.config_sha256,
                                adapter_size=task.adapter_size, score=task.score, trainable_params=None,
                                data_source="elsewhere")
    description = lifecycle.Description(data_source="elsewhere", task_type=task.task_type, metric=task.metric,
                                        text_columns=task.text_columns, label_column=task.label_column,
                                        labels=task.labels)
    before = snapshot(settings)
    with pytest.raises(RegistryError) as raised:
        lifecycle.publish(registry, [lifecycle.Publication(release=release, name="other", description=description)],
                          [("ab" * 32, "adapter", 1)])
    registry.close()
    assert str(raised.value) == ("could not publish 'other': other writers took the same name, position or version "
                                 "number 3 times: run the command again")
    assert snapshot(settings) == before
