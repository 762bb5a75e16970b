"""What the API returns: small frozen dataclasses, and `Rows`, a list of them with `.to_pandas()`.

Timestamps are ISO 8601 text (UTC), as the database's rows read. `plain(result)` turns any of them into
the dicts and lists `registry … --json` prints (a field named `from_` prints as `from`). Imports nothing
heavy: pandas only inside `to_pandas`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from registry.errors import RegistryError


def plain(value: Any) -> Any:
    """A result as JSON-ready dicts and lists, recursively (field `from_` becomes key `from`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name.removesuffix("_"): plain(getattr(value, field.name))
                for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def build(cls, row: dict[str, Any]):
    """A result of type `cls` from a library row (a key `from` fills field `from_`)."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key if key in names else f"{key}_": value for key, value in row.items()})


def pandas():
    """pandas, or a one-line error saying how to get it."""
    try:
        import pandas
    except ImportError:
        raise RegistryError("to_pandas() needs pandas: pip install pandas") from None
    return pandas


class Rows(list):
    """A list of results (one kind of row) that also converts to a pandas DataFrame."""

    def to_pandas(self):
        """One DataFrame row per result, one column per field (nested values kept as Python objects)."""
        return pandas().DataFrame([plain(row) for row in self])


@dataclass(frozen=True)
class Base:
    """The registry's frozen base checkpoint."""

    name: str
    source: str
    model_type: str
    sha256: str
    parameters: int
    hidden_size: int | None
    layers: int | None
    created_at: str | None


@dataclass(frozen=True)
class Task:
    """A task in `tasks()`: its position (None unless ready), current version and score, and its status."""

    position: int | None
    name: str
    version: int | None
    task_type: str | None
    metric: str | None
    score: float | None
    trainable_params: int | None
    trainable_share: float | None
    adapter_size: int | None
    status: str  # training | ready | failed
    created_at: str | None
    ready_at: str | None
    retired_at: str | None


@dataclass(frozen=True)
class TaskVersion(Task):
    """What `add_task` published: the task now, the version it trained, whether that is current, and why."""

    published_version: int
    published_current: bool
    why: str
    init_from: str | None  # the earlier task the published run started from; None: from scratch


@dataclass(frozen=True)
class Version:
    """One version of a task: current or a candidate, and why it was (not) made current when published."""

    version: int
    current: bool
    score: float | None
    run: int | None
    adapter_size: int
    trainable_params: int | None
    data_source: str | None
    adapter_sha256: str
    config_sha256: str
    created_at: str | None
    why: str | None


@dataclass(frozen=True)
class Event:
    """A move of a task's current version, or its retirement or restoration: what, when, by whom and why."""

    at: str | None
    action: str
    version: int | None
    by: str | None
    why: str | None


@dataclass(frozen=True)
class StartPoint:
    """The earlier task's version (and adapter bytes) a run's adapters started from."""

    task: str
    version: int
    adapter_sha256: str | None


@dataclass(frozen=True)
class Run:
    """A training run of one task, in `TaskDetail.runs`: hyper-parameters, start point, outcome and times."""

    run: int
    status: str
    init_from: StartPoint | None  # None: from scratch
    selection: dict | None  # how `Auto` chose the start (similarity ranking, trials, guard), or the task named
    hyperparams: dict
    seed: int | None
    device: str | None
    score: float | None
    best_epoch: int | None
    trainable_params: int | None
    validation_from: str | None
    versions: dict | None
    started_at: str | None
    finished_at: str | None
    error: str | None


@dataclass(frozen=True)
class TaskDetail(Task):
    """One task with its columns, label map, artifacts, versions, events and runs (`registry show`)."""

    text_columns: tuple[str, ...]
    label_column: str | None
    labels: tuple[str, ...] | None
    adapter_sha256: str | None
    config_sha256: str | None
    base_sha256: str
    versions: Rows
    events: Rows
    runs: Rows

    @classmethod
    def of(cls, row: dict[str, Any]) -> TaskDetail:
        """From `catalog.show_task`'s row."""
        runs = [{**run, "init_from": StartPoint(**run["init_from"]) if run["init_from"] else None}
                for run in row["runs"]]
        return cls(**{**row, "text_columns": tuple(row["text_columns"] or ()),
                      "labels": tuple(row["labels"]) if row["labels"] is not None else None,
                      "versions": Rows(Version(**v) for v in row["versions"]),
                      "events": Rows(Event(**e) for e in row["events"]), "runs": Rows(Run(**r) for r in runs)})


@dataclass(frozen=True)
class Score:
    """One recorded metric (`history()`): a training epoch's (`run`) or a later evaluation's, and of which version."""

    task: str
    version: int | None
    run: int | None
    evaluation: int | None
    tasks_present: int | None
    split: str
    epoch: int | None
    step: int | None
    metric: str
    value: float
    recorded_at: str | None


@dataclass(frozen=True)
class Matrix:
    """R[i][j], task j's score once the registry held i+1 tasks, with GEM's ACC, BWT and per-task FWT."""

    tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    matrix: tuple[tuple[float | None, ...], ...]
    acc: float | None
    bwt: float | None
    fwt: tuple[float | None, ...]
    fwt_mean: float | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Matrix:
        """From `catalog.score_matrix`'s dict."""
        return cls(tasks=tuple(row["tasks"]), metrics=tuple(row["metrics"]),
                   matrix=tuple(tuple(scores) for scores in row["matrix"]), acc=row["acc"], bwt=row["bwt"],
                   fwt=tuple(row["fwt"]), fwt_mean=row["fwt_mean"])

    def to_pandas(self):
        """R as a DataFrame: one row per 'after adding' task, one column per task."""
        return pandas().DataFrame(list(self.matrix), index=list(self.tasks), columns=list(self.tasks))


@dataclass(frozen=True)
class Promotion:
    """A version made current: which, the one it replaced, its score, who, when and why."""

    task: str
    version: int
    previous: int | None
    score: float | None
    promoted_by: str
    promoted_at: str
    why: str


@dataclass(frozen=True)
class Retirement:
    """A task hidden from tasks(), export and serving: when, by whom and why."""

    task: str
    retired_at: str
    by: str
    why: str | None


@dataclass(frozen=True)
class Restoration:
    """A retired task brought back: when, by whom and why."""

    task: str
    retired_at: None
    restored_at: str
    by: str
    why: str | None


@dataclass(frozen=True)
class Evaluation:
    """A stored task's current version scored again (`evaluate`), recorded with how many tasks were ready."""

    task: str
    version: int
    metric: str
    score: float
    scores: dict[str, float]
    tasks_present: int
    evaluation: int


@dataclass(frozen=True)
class Problem:
    """One inconsistency `verify` found: a kind, what it is about, and a one-line message saying what to do."""

    kind: str  # missing | corrupt | size | task | position | unreferenced | foreign | run | cache
    subject: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found: problems left, files removed by `prune`, and how much was checked."""

    ok: bool
    problems: tuple[Problem, ...]
    pruned: tuple[str, ...]
    discarded: tuple[str, ...]  # corrupt cache entries removed by `prune`
    checked: dict[str, int]


@dataclass(frozen=True)
class RunSummary:
    """A run in `runs()`: its task, status, start (`from_`: 'scratch' or 'TASK vN'), score, process and times."""

    run: int
    task: str
    status: str
    from_: str
    score: float | None
    device: str | None
    host: str | None
    pid: int | None
    started_at: str | None
    heartbeat_at: str | None
    finished_at: str | None
    error: str | None


@dataclass(frozen=True)
class Imported:
    """What `import_bundle` did: whether it started the registry (from the bundle's base), and the tasks added."""

    initialised: bool
    base_sha256: str
    tasks: Rows


@dataclass(frozen=True)
class SchemaRevision:
    """The database's schema revision (None: an empty database) and the one this code expects."""

    database: str | None
    code: str
