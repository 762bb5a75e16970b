"""No silent wrong answers, one bad task never takes the others down, and what the registry writes it reads back
(issue 21, items 2-4). Every test runs on SQLite and PostgreSQL with the tiny base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text

from registry.serving import live, server
from registry.storage import db
from registry.storage.config import Settings
from registry.storage.core import open_registry
from registry.storage.store import Store
from tests.bad_bundles import rehash
from tests.test_bundle import cli_for
from tests.helpers import make_settings, one_line_error, snapshot
from tests.test_reliability import add_args, write_data


@pytest.fixture
def run_cli(settings):
    """The CLI on this test's registry, its arguments given as paths or text."""
    return cli_for(settings)


@pytest.fixture
def other(tmp_path, dialect, pg_skip_reason):
    """A second, empty registry location of the same dialect."""
    if dialect == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path / "other", dialect)
    yield settings
    cleanup()


@pytest.fixture
def two_tasks(settings, run_cli, tiny_base, tmp_path):
    """A registry with tasks 'good' and 'broken' (each one epoch on the tiny base); returns the data."""
    assert run_cli("init", "--base", tiny_base).exit_code == 0
    data = write_data(tmp_path / "data.tsv")
    for seed, name in enumerate(("good", "broken")):  # two seeds: two adapters
        result = run_cli(*add_args(name, data, seed=seed))
        assert result.exit_code == 0, result.output
    return data


def shown(run_cli, name: str) -> dict:
    return json.loads(run_cli("show", name, "--json").stdout)


def replace_adapter(settings: Settings, name: str, change) -> str:
    """Put `change(tensors)` in the store as task `name`'s adapter, as a tampered or old registry would hold it."""
    registry = open_registry(settings)
    with registry.read() as session:
        old = session.execute(text("SELECT adapter_sha256 FROM tasks WHERE name = :n"), {"n": name}).scalar()
    data = safetensors.torch.save(change(safetensors.torch.load(registry.store.get(old))))
    sha = registry.store.put(data)
    with registry.engine.begin() as connection:
        connection.execute(text("INSERT INTO artifacts (sha256, kind, size, created_at) VALUES (:s, 'adapter', :n, "
                                "CURRENT_TIMESTAMP)"), {"s": sha, "n": len(data)})
        for table in ("tasks", "task_versions"):
            connection.execute(text(f"UPDATE {table} SET adapter_sha256 = :s WHERE adapter_sha256 = :o"),
                               {"s": sha, "o": old})
    registry.close()
    return sha


def times(factor: float):
    return lambda tensors: {key: value * factor for key, value in tensors.items()}


# --------------------------------------------------------------------------------------------
# 3. no silent wrong answers


def base_copy(tiny_base: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "base"
    shutil.copytree(tiny_base, copy)
    return copy


def edit_config(base: Path, **changes) -> None:
    config = json.loads((base / "config.json").read_text())
    config.update(changes)
    (base / "config.json").write_text(json.dumps(config))


def only_special_tokens(base: Path) -> None:
    from transformers import BertTokenizerFast

    for path in base.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(specials)}).save_pretrained(base)


def nan_weights(base: Path) -> None:
    tensors = safetensors.torch.load_file(base / "model.safetensors")
    tensors["embeddings.LayerNorm.weight"] = torch.full_like(tensors["embeddings.LayerNorm.weight"], float("nan"))
    safetensors.torch.save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})


BAD_BASES = [
    ("more-layers", lambda base: edit_config(base, num_hidden_layers=3),
     "missing weight tensor(s) for its config.json"),
    ("fewer-layers", lambda base: edit_config(base, num_hidden_layers=1),
     "unexpected weight tensor(s) for its config.json"),
    ("no-vocabulary", only_special_tokens, "its tokenizer reads every word of"),
    ("nan-weights", nan_weights, "gives NaN or infinite outputs on a probe sentence"),
]


@pytest.mark.parametrize("name, damage, problem", BAD_BASES, ids=[case[0] for case in BAD_BASES])
def test_init_refuses_a_base_that_would_answer_wrongly(settings, run_cli, tiny_base, tmp_path, name, damage, problem):
    base = base_copy(tiny_base, tmp_path)
    damage(base)
    line = one_line_error(run_cli("init", "--base", base))
    assert line.startswith(f"Error: base '{base}': ") and problem in line, line
    assert db.revision_at(settings.db_url) is None and not settings.home.exists()


def test_a_task_giving_infinite_outputs_is_refused_never_answered(settings, run_cli, two_tasks, tmp_path, other):
    good_bundle = tmp_path / "bundle"
    assert run_cli("export", "--output", good_bundle).exit_code == 0
    bad_bundle = tmp_path / "bad-bundle"
    shutil.copytree(good_bundle, bad_bundle)
    adapter = bad_bundle / "adapters" / "broken.safetensors"
    safetensors.torch.save_file(times(1e30)(safetensors.torch.load_file(adapter)), adapter)
    rehash(bad_bundle)

    for target in (other, settings):  # a new registry (the bundle's base) and this one (its stored base)
        before = snapshot(target)
        line = one_line_error(cli_for(target)("import", bad_bundle))
        assert "task 'broken' gives NaN or infinite outputs on" in line, line
        assert snapshot(target) == before
    line = one_line_error(run_cli("predict", "--bundle", bad_bundle, "--task", "broken", "good"))
    assert "task 'broken' gave NaN or infinite outputs" in line

    replace_adapter(settings, "broken", times(1e30))  # as a registry holds it from before the probe
    line = one_line_error(run_cli("predict", "--task", "broken", "good film"))
    assert line.startswith("Error: task 'broken' cannot be served (NonFiniteOutput") or "'broken'" in line, line
    before = snapshot(settings)
    line = one_line_error(run_cli("eval", "broken"))
    assert line.startswith("Error: task 'broken' gives NaN or infinite outputs on its validation data"), line
    assert snapshot(settings) == before  # no evaluation row (nor any other) was written
    answered = run_cli("predict", "--task", "good", "good film", "--json")
    assert answered.exit_code == 0, answered.output
    assert json.loads(answered.stdout)[0]["label"] in ("0", "1")


# --------------------------------------------------------------------------------------------
# 2. one bad task never takes the others down


def test_a_bundle_is_checked_against_the_stored_base_never_its_own_claim(settings, run_cli, two_tasks, tmp_path,
                                                                         other):
    bundle = tmp_path / "bundle"
    assert run_cli("export", "--output", bundle).exit_code == 0
    edit_config(bundle / "base", num_hidden_layers=3)  # weights untouched: the base's sha256 still matches
    for entry in json.loads((bundle / "manifest.json").read_text())["tasks"]:  # adapters padded to 3 layers
        path = bundle / entry["adapter"]
        tensors = safetensors.torch.load_file(path)
        tensors |= {key.replace(".1.", ".2."): value.clone() for key, value in tensors.items() if ".1." in key}
        safetensors.torch.save_file(tensors, path)
    rehash(bundle)

    before = snapshot(settings)
    line = one_line_error(run_cli("import", bundle))
    assert "base/config.json" in line and "is not this registry's base config" in line, line
    assert snapshot(settings) == before
    before = snapshot(other)
    line = one_line_error(cli_for(other)("import", bundle))
    assert "missing weight tensor(s) for its config.json" in line, line
    assert snapshot(other) == before


def test_a_task_that_cannot_load_is_quarantined_and_the_others_serve(settings, run_cli, two_tasks, tmp_path, caplog):
    store = Store(settings.store_url)
    broken = shown(run_cli, "broken")["adapter_sha256"]
    Path(store.path(broken)).unlink()  # one artifact missing

    registry = open_registry(settings)
    tasks = live.RegistryTasks(registry)
    assert tasks.predictor.tasks == ["good"] and list(tasks.unavailable) == ["broken"]
    assert tasks.unavailable["broken"]["available"] is False and "is missing" in tasks.unavailable["broken"]["problem"]
    with TestClient(server.create_app(tasks, watch=False)) as client:
        assert client.get("/readyz").json() == {"status": "ready", "tasks": 1, "unavailable": ["broken"]}
        listed = client.get("/v1/tasks").json()
        assert [(t["name"], t.get("available", True)) for t in listed] == [("good", True), ("broken", False)]
        assert "registry_serve_tasks_unavailable 1.0" in client.get("/metrics").text
        refused = client.post("/v1/predict", json={"task": "broken", "inputs": ["good"]})
        assert refused.status_code == 503 and "task 'broken' is unavailable here" in refused.json()["detail"]
        answered = client.post("/v1/predict", json={"task": "good", "inputs": ["good"]})
        assert answered.status_code == 200, answered.text

    args = [arg for arg in add_args("later", two_tasks) if arg != "--quiet"]
    result = run_cli(*args, "--init-from", "auto")  # auto skips the unusable candidate, in one line
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped == [f"--init-from auto: skipped broken (artifact {broken[:12]} is missing from the store "
                       f"{settings.store_url}: run `registry verify`)"], result.stderr
    assert tasks.refresh() and tasks.predictor.tasks == ["good", "later"] and list(tasks.unavailable) == ["broken"]
    logged = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(logged) == 1 and "'broken'" in logged[0]  # logged once, not at every rebuild
    registry.close()

    before = snapshot(settings)
    line = one_line_error(run_cli("export", "--output", tmp_path / "out"))
    assert line.startswith("Error: cannot export task 'broken': artifact ") and "--tasks" in line, line
    assert snapshot(settings) == before and not (tmp_path / "out").exists()
    assert run_cli("export", "--output", tmp_path / "out", "--tasks", "good,later").exit_code == 0
    problems = json.loads(run_cli("verify", "--json").stdout)["problems"]
    assert [p["kind"] for p in problems] == ["missing"] and "task 'broken'" in problems[0]["message"]


# --------------------------------------------------------------------------------------------
# 4. what the registry writes, it reads back


def long_path(root: Path, length: int, name: str = "data.tsv") -> Path:
    """A path of exactly `length` characters under `root`, in directories of at most 200 characters."""
    path = root
    while len(str(path / name)) < length:
        room = length - len(str(path / name)) - 1
        path = path / ("d" * min(200, max(room, 1)))
    assert len(str(path / name)) == length, (len(str(path / name)), length)
    path.mkdir(parents=True, exist_ok=True)
    return path / name


def write_named_data(path: Path, text_column: str, label_column: str, labels: tuple[str, str]) -> Path:
    rows = write_data(path.with_suffix(".plain.tsv")).read_text().splitlines()[1:]
    lines = [f"{text_column}\t{label_column}"] + [
        f"{row.split(chr(9))[0]}\t{labels[int(row.split(chr(9))[1])]}" for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_accepted_value_round_trips_through_export_and_import(settings, run_cli, tiny_base, tmp_path, other):
    assert run_cli("init", "--base", tiny_base, "--name", "bäse ✓ " + "n" * 192).exit_code == 0
    data = write_named_data(long_path(tmp_path / "dätä ✓", 1024), "téxt " + "t" * 195, "lábel " + "l" * 194,
                            ("négatif " + "x" * 192, "正面 " + "y" * 197))
    result = run_cli(*add_args("extremes", data), "--text-column", "téxt " + "t" * 195,
                     "--label-column", "lábel " + "l" * 194)
    assert result.exit_code == 0, result.output
    assert run_cli("export", "--output", tmp_path / "bundle").exit_code == 0
    imported = cli_for(other)("import", tmp_path / "bundle")
    assert imported.exit_code == 0, imported.output
    fields = ("text_columns", "label_column", "labels")
    here, there = shown(run_cli, "extremes"), shown(cli_for(other), "extremes")
    assert {f: there[f] for f in fields} == {f: here[f] for f in fields}
    assert there["versions"][0]["data_source"] == here["versions"][0]["data_source"] == str(data)
    assert here["labels"][1] == "正面 " + "y" * 197
    assert json.loads(cli_for(other)("predict", "--task", "extremes", "good", "--json").stdout)[0]["label"] in here[
        "labels"]


REFUSED = [  # (id, how the data or base is named, the problem the line names)
    ("data-nbsp", {"directory": "my\xa0data"}, "the data source '"),
    ("data-too-long", {"length": 1025}, "characters long, over 1024"),
    ("label-escape", {"labels": ("\x1b[31mneg", "pos")}, "the label '\\x1b[31mneg' holds the non-printable character"),
    ("label-too-long", {"labels": ("n" * 201, "pos")}, "characters long, over 200"),
    ("label-column-too-long", {"label_column": "l" * 201}, "the label column 'llll"),
    ("text-column-too-long", {"text_column": "t" * 201}, "the text column 'tttt"),
]


@pytest.mark.parametrize("case, naming, problem", REFUSED, ids=[case[0] for case in REFUSED])
def test_a_value_the_registry_could_not_read_back_is_refused_at_the_door(settings, run_cli, tiny_base, tmp_path,
                                                                         case, naming, problem):
    assert run_cli("init", "--base", tiny_base).exit_code == 0
    root = tmp_path / naming.get("directory", "data")
    path = long_path(root, naming["length"]) if "length" in naming else root / "data.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    text_column, label_column = naming.get("text_column", "sentence"), naming.get("label_column", "label")
    data = write_named_data(path, text_column, label_column, naming.get("labels", ("neg", "pos")))
    before = snapshot(settings)
    line = one_line_error(run_cli(*add_args("refused", data), "--text-column", text_column,
                                  "--label-column", label_column))
    assert problem in line and line.endswith("rename it (the registry stores, exports and imports only printable "
                                             "text of bounded length)"), line
    assert snapshot(settings) == before


@pytest.mark.parametrize("name, problem", [("\x1b[2Jbase", "holds the non-printable character U+001B"),
                                           ("b" * 201, "characters long, over 200")])
def test_a_base_name_the_registry_could_not_read_back_is_refused(settings, run_cli, tiny_base, name, problem):
    line = one_line_error(run_cli("init", "--base", tiny_base, "--name", name))
    assert line.startswith("Error: the base name '") and problem in line and line.endswith("pass another --name")
    assert db.revision_at(settings.db_url) is None
