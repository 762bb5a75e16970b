"""Forward transfer on both dialects: `add-task --init-from TASK|auto|none`, `--compare-scratch` and FWT in
`history --matrix`, the source left byte-identical, `--no-base-dropout`. Real training on the tiny BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load as load_tensors
from torch import nn

from registry.training import transfer
from registry.storage.core import open_registry
from tests.helpers import one_line_error, snapshot, write_task_data


@pytest.fixture
def data(run_cli, tiny_base, tmp_path):
    """A registry holding task `a` (sentiment, adapter size 64), and the tiny tasks' data."""
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    root = write_task_data(tmp_path / "data")
    add(run_cli, "a", root / "sentiment", "--epochs", "3", "--lr", "3e-3")
    return root


def add(run_cli, name: str, data, *extra: str) -> tuple[dict, str]:
    """Add a task; its row and what it said on stderr (the inferred settings, auto's choice)."""
    result = run_cli("add-task", name, "--data", str(data), "--batch-size", "16", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def shown(run_cli, name: str) -> dict:
    return json.loads(run_cli("show", name, "--json").stdout)


def stored(settings, sha: str) -> dict:
    return load_tensors(open_registry(settings).store.get(sha))


def test_init_from_a_task_starts_from_its_adapters_and_leaves_it_byte_identical(settings, run_cli, data):
    a = shown(run_cli, "a")
    files = {sha: open_registry(settings).store.get(sha) for sha in (a["adapter_sha256"], a["config_sha256"])}

    # a learning rate too small to move anything: the stored adapters are where the run started
    add(run_cli, "b", data / "sentiment", "--init-from", "a", "--epochs", "1", "--lr", "1e-9")
    add(run_cli, "fresh", data / "sentiment", "--epochs", "1", "--lr", "1e-9")
    source, b, fresh = (stored(settings, shown(run_cli, name)["adapter_sha256"]) for name in ("a", "b", "fresh"))
    body = [key for key in source if not key.startswith("head.")]
    assert body and all(np.allclose(b[key], source[key], atol=1e-6) for key in body)
    assert max(float((fresh[key] - source[key]).abs().max()) for key in body) > 1e-3  # scratch is elsewhere
    assert np.allclose(b["head.weight"], fresh["head.weight"], atol=1e-6)  # the head is new, as from scratch

    run = shown(run_cli, "b")["runs"][0]
    assert run["init_from"] == {"task": "a", "version": 1, "adapter_sha256": a["adapter_sha256"]}
    assert run["selection"] == {"requested": "a", "chosen": "a"}
    assert shown(run_cli, "fresh")["runs"][0]["init_from"] is None
    # the source: its files, its row and its score on its validation data are unchanged (BWT exactly 0)
    assert {sha: open_registry(settings).store.get(sha) for sha in files} == files
    after = shown(run_cli, "a")
    assert {k: after[k] for k in ("adapter_sha256", "score", "version", "position")} == {
        k: a[k] for k in ("adapter_sha256", "score", "version", "position")}
    assert json.loads(run_cli("eval", "a", "--json", "--quiet").stdout)["score"] == a["score"]
    for command in ("runs", "show"):  # the tables say where each run started
        assert "a v1" in run_cli(command, "b").stdout and "scratch" in run_cli(command, "fresh").stdout


def test_auto_tries_every_candidate_and_chooses_by_its_rule(settings, run_cli, data):
    add(run_cli, "small", data / "pairs", "--epochs", "1", "--adapter-size", "16")
    _, stderr = add(run_cli, "sim", data / "similarity", "--epochs", "2", "--init-from", "auto", "--compare-scratch")
    runs = shown(run_cli, "sim")["runs"]
    selection = runs[0]["selection"]
    losses = {entry["task"]: entry["loss"] for entry in selection["losses"]}
    assert set(losses) == {None, "a"} and selection["skipped"] == ["small"]  # another adapter size: not a candidate
    assert selection["rows"] == [36, 12] and selection["criterion"] == transfer.CRITERION  # 48 rows: a quarter held
    chosen = "a" if losses["a"] < (1 - transfer.AUTO_MARGIN) * losses[None] else None
    assert selection["chosen"] == chosen
    assert "--init-from auto: held-out loss after a short trial from each start on 36 + 12 training rows: none " \
        in stderr
    assert f"→ {chosen or 'none'}" in stderr
    starts = [run["init_from"]["task"] if run["init_from"] else None for run in runs]
    assert starts == (["a", None] if chosen else [None])  # --compare-scratch trains scratch only beside a source


def test_auto_picks_a_start_that_already_knows_the_task(settings, run_cli, data):
    """`teacher` learned this very data: a short trial from it ends with a lower held-out loss than from scratch."""
    teacher, _ = add(run_cli, "teacher", data / "sentiment", "--epochs", "30", "--lr", "3e-3", "--batch-size", "8")
    assert teacher["score"] >= 0.8
    add(run_cli, "again", data / "sentiment", "--epochs", "1", "--init-from", "auto")
    (run,) = shown(run_cli, "again")["runs"]
    losses = {entry["task"]: entry["loss"] for entry in run["selection"]["losses"]}
    assert losses["teacher"] < (1 - transfer.AUTO_MARGIN) * losses[None] and losses["teacher"] < losses["a"], losses
    assert run["selection"]["chosen"] == "teacher" and run["init_from"]["task"] == "teacher"


def test_compare_scratch_gives_the_forward_transfer_and_the_better_run_is_published(settings, run_cli, data,
                                                                                      monkeypatch):
    monkeypatch.setattr(transfer, "AUTO_MARGIN", -1.0)  # any earlier task beats none: auto must pick `a`
    add(run_cli, "b", data / "sentiment", "--epochs", "2", "--init-from", "auto", "--compare-scratch")
    task = shown(run_cli, "b")
    from_a, scratch = task["runs"]
    assert from_a["init_from"]["task"] == "a" and scratch["init_from"] is None
    assert from_a["selection"]["chosen"] == "a" == scratch["selection"]["chosen"]
    assert (from_a["seed"], from_a["hyperparams"]) == (scratch["seed"], scratch["hyperparams"])
    assert task["score"] == max(from_a["score"], scratch["score"])

    matrix = json.loads(run_cli("history", "--matrix", "--json").stdout)
    assert matrix["tasks"] == ["a", "b"]
    assert matrix["fwt"] == [None, from_a["score"] - scratch["score"]]
    assert matrix["fwt_mean"] == from_a["score"] - scratch["score"]
    text = run_cli("history", "--matrix").stdout
    assert text.splitlines()[-2].split()[0] == "FWT" and f"FWT {matrix['fwt_mean']:.4f}" in text


def test_auto_with_no_earlier_task_trains_from_scratch(settings, run_cli, tiny_base, tmp_path):
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    root = write_task_data(tmp_path / "data")
    _, stderr = add(run_cli, "first", root / "sentiment", "--epochs", "1", "--init-from", "auto")
    assert "→ none (no earlier task with adapters of this size)" in stderr
    (run,) = shown(run_cli, "first")["runs"]
    assert run["init_from"] is None and run["selection"]["chosen"] is None
    assert run["selection"]["losses"] == []  # nothing to compare: no trial


def test_a_new_version_and_a_sweep_start_from_the_task_itself(settings, run_cli, data):
    add(run_cli, "a", data / "sentiment", "--new-version", "--init-from", "a", "--sweep", "--epochs", "1")
    runs = shown(run_cli, "a")["runs"][1:]
    # a source fixes the adapter size: the sweep is over the learning rates only
    assert [(r["hyperparams"]["lr"], r["hyperparams"]["adapter_size"]) for r in runs] == [
        (3e-4, 64), (1e-3, 64), (3e-3, 64)]
    assert {(r["init_from"]["task"], r["init_from"]["version"]) for r in runs} == {("a", 1)}


@pytest.mark.parametrize(("args", "message"), [
    (["--init-from", "nosuch"], "Error: no ready task named 'nosuch'; known tasks: a"),
    (["--init-from", "a", "--adapter-size", "16"],
     "Error: --init-from a: its adapters have size 64, this run's 16: pass --adapter-size 64"),
    (["--compare-scratch"],
     "Error: --compare-scratch needs --init-from auto or TASK (the run is already from scratch)"),
])
def test_bad_init_from_is_one_line_and_changes_nothing(settings, run_cli, data, args, message):
    before = snapshot(settings)
    result = run_cli("add-task", "b", "--data", str(data / "sentiment"), *args)
    line = one_line_error(result, exit_code=2 if "--compare-scratch" in message else 1)
    assert line == message or line.startswith(f"{message} (see `")  # a usage error points at --help
    assert snapshot(settings) == before


def test_a_retired_task_is_no_source(settings, run_cli, data):
    assert run_cli("retire", "a").exit_code == 0
    before = snapshot(settings)
    result = run_cli("add-task", "b", "--data", str(data / "sentiment"), "--init-from", "a")
    assert one_line_error(result) == "Error: task 'a' is retired: `registry restore a` brings it back"
    assert snapshot(settings) == before
    _, stderr = add(run_cli, "c", data / "sentiment", "--epochs", "1", "--init-from", "auto")
    assert "no earlier task with adapters of this size" in stderr  # nor a candidate of auto


def test_the_base_dropout_is_off_unless_asked_and_the_run_says_so(settings, run_cli, data, tiny_base):
    from registry.training.tasks import build_model

    add(run_cli, "b", data / "sentiment", "--epochs", "1", "--base-dropout")
    assert shown(run_cli, "b")["runs"][0]["hyperparams"]["base_dropout"] is True
    assert shown(run_cli, "a")["runs"][0]["hyperparams"]["base_dropout"] is False  # the default
    off = build_model(tiny_base, 8, 2, 0)
    on = build_model(tiny_base, 8, 2, 0, base_dropout=True)
    assert {m.p for m in off.modules() if isinstance(m, nn.Dropout)} == {0.0}
    assert off.encoder.config.attention_probs_dropout_prob == 0.0
    assert max(m.p for m in on.modules() if isinstance(m, nn.Dropout)) > 0
