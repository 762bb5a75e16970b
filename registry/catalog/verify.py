"""Consistency checks of a registry's database and store: `registry verify [--prune]`.

What is checked (opening the registry has already checked the schema revision):

* every artifact row: its file is in the store, its bytes hash to its sha256 and have its size;
* every ready task: it names an adapter and a config artifact, the config parses, names the
  registry's base and repeats the task's type, labels, columns, metric and adapter size; the adapter
  is a safetensors file of float32 tensors whose names, shapes and count fit the base, the adapter
  size and the label count; ready positions are exactly 1..N and no task that is not ready holds a position; it
  carries its current version's artifacts and score;
* every file in the store is an artifact the database knows. Unreferenced files (left behind by a
  kill between storing an artifact and committing it) are reported, and removed with `prune`;
* every run that recorded the sha256 of the base weights it loaded (`versions.base_sha256`) loaded
  this registry's base;
* this host's cache (REGISTRY_HOME/cache, see registry.cache): every entry still hashes as recorded;
  a corrupt entry is reported, and removed with `prune` (it is fetched or made again when next needed).

Imports neither torch nor transformers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from registry.catalog.lifecycle import CURRENT_FIELDS
from registry.catalog.runs import sweep_stale_runs
from registry.formats import TASK_CONFIG_FIELDS, adapter_problem, config_problem, head_size
from registry.storage import cache, ownership
from registry.storage.core import Opened
from registry.storage.models import Artifact, Evaluation, Run, Task, TaskVersion
from registry.formats import digest


@dataclass(frozen=True)
class Problem:
    """One inconsistency: a kind, what it is about, and a one-line message that says what to do."""

    kind: str  # missing | corrupt | size | task | position | unreferenced | foreign | run | cache
    subject: str
    message: str


@dataclass
class Report:
    """What `verify` found: problems left, files removed by `prune`, and how much was checked."""

    problems: list[Problem] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)  # corrupt cache entries removed by `prune`
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [asdict(p) for p in self.problems], "pruned": self.pruned,
                "discarded": self.discarded, "checked": self.checked}


def verify(registry: Opened, *, prune: bool = False) -> Report:
    """Check the database against the store; with `prune`, sweep dead runs and remove unreferenced store files."""
    report = Report()
    if prune:
        ownership.ensure_owned(registry)  # prune deletes only in the registry's own store (refused, nothing removed)
        sweep_stale_runs(registry)  # a dead add-task must not keep its files from being pruned
    with registry.read() as session:
        base = registry.base(session)
        artifacts = session.scalars(select(Artifact).order_by(Artifact.sha256)).all()
        tasks = session.scalars(select(Task).order_by(Task.id)).all()
        users = artifact_users(session, base, tasks)
        check_current_versions(session, tasks, report)
        loaded_bases = session.execute(select(Run.id, Run.versions).order_by(Run.id)).all()
    sizes = {artifact.sha256: artifact.size for artifact in artifacts}

    intact = check_artifacts(registry, sizes, users, report)
    check_tasks(registry, base, tasks, intact, report)
    unreferenced, files = check_store(registry, set(sizes), report)
    check_loaded_bases(base.sha256, loaded_bases, report)
    corrupt_cache = check_cache(registry, base, report)
    report.checked = {"artifacts": len(artifacts), "tasks": sum(t.status == "ready" for t in tasks), "files": files}
    if prune:
        for path in corrupt_cache:
            cache.remove(path)
            report.discarded.append(str(path))
        report.problems = [p for p in report.problems if p.kind != "cache"]

    if prune and unreferenced:
        with registry.read() as session:  # after the sweep: only live add-tasks are still training
            training = session.scalars(select(Task.name).where(Task.status == "training").order_by(Task.id)).all()
        report.problems = [p for p in report.problems if p.kind != "unreferenced"]
        if training:
            report.problems.append(Problem("unreferenced", f"{len(unreferenced)} files", (
                f"not pruned: {len(unreferenced)} unreferenced files kept while {', '.join(map(repr, training))} "
                f"train{'s' if len(training) == 1 else ''} (it may be about to publish them); "
                "run `registry verify --prune` when it has finished")))
        else:
            for path in unreferenced:
                registry.store.remove(path)
                report.pruned.append(path)
    return report


def artifact_users(session, base, tasks: list[Task]) -> dict[str, list[str]]:
    """For each artifact, what refers to it, for messages ("adapter of task 'cola'")."""
    users: dict[str, list[str]] = defaultdict(list)
    for sha, what in ((base.sha256, "base weights"), (base.config_sha256, "base config"),
                      (base.tokenizer_sha256, "base tokenizer")):
        users[sha].append(what)
    for task in tasks:
        for sha, what in ((task.adapter_sha256, "adapter"), (task.config_sha256, "config")):
            if sha:
                users[sha].append(f"{what} of {task.status} task {task.name!r}")
    for run_id, sha in session.execute(select(Run.id, Run.adapter_sha256).where(Run.adapter_sha256.is_not(None))):
        users[sha].append(f"run {run_id}")
    for run_id, sha in session.execute(select(Run.id, Run.init_adapter_sha256)
                                       .where(Run.init_adapter_sha256.is_not(None))):
        users[sha].append(f"start of run {run_id}")
    for evaluation_id, sha in session.execute(select(Evaluation.id, Evaluation.adapter_sha256)):
        users[sha].append(f"evaluation {evaluation_id}")
    for name, version, sha in session.execute(select(Task.name, TaskVersion.version, TaskVersion.embedding_sha256)
                                              .join(TaskVersion, TaskVersion.task_id == Task.id)
                                              .where(TaskVersion.embedding_sha256.is_not(None))):
        users[sha].append(f"text embedding of {name!r} version {version}")
    return users


def check_artifacts(registry: Opened, sizes: dict[str, int], users: dict[str, list[str]], report: Report) -> set[str]:
    """Every artifact row has its file, hashing to its name, of its size; returns the intact ones."""
    store = registry.store
    intact = set()
    for sha, size in sizes.items():
        role = f" ({', '.join(users[sha][:3])}{', …' if len(users[sha]) > 3 else ''})" if users.get(sha) else ""
        try:
            found, length = hash_file(store, store.path(sha))
        except FileNotFoundError:
            report.problems.append(Problem("missing", sha, (
                f"artifact {sha[:12]}{role} is missing from the store {store.url}: restore the file or the store "
                "from a backup, or re-add the task under a new name")))
            continue
        if found != sha:
            report.problems.append(Problem("corrupt", sha, (
                f"artifact {sha[:12]}{role} in {store.url} does not match its sha256 (corrupt or tampered): "
                "restore the file from a backup, or re-add the task under a new name")))
        elif length != size:
            report.problems.append(Problem("size", sha, (
                f"artifact {sha[:12]}{role} is {length} bytes but the database records {size}: "
                "the database row was altered; restore the database from a backup")))
        else:
            intact.add(sha)
    return intact


def hash_file(store, path: str) -> tuple[str, int]:
    """sha256 and length of a store file."""
    def read() -> tuple[str, int]:
        with store.fs.open(path, "rb") as handle:
            return digest(handle)

    return store.call(f"read {path}", read)  # retried, then StoreUnavailable when the store is down


def check_tasks(registry: Opened, base, tasks: list[Task], intact: set[str], report: Report) -> None:
    """Ready tasks have intact, well-formed artifacts built on this base; positions are exactly 1..N."""
    ready = [task for task in tasks if task.status == "ready"]
    for task in ready:
        subject = f"task {task.name!r}"
        if not task.adapter_sha256 or not task.config_sha256:
            report.problems.append(Problem("task", task.name, (
                f"ready {subject} names no {'adapter' if not task.adapter_sha256 else 'config'} artifact: "
                "the database was altered; restore it from a backup")))
            continue
        if task.config_sha256 in intact:
            problem = config_problem(registry.store.get(task.config_sha256), base.sha256, task_facts(task))
            if problem:
                report.problems.append(Problem("task", task.name, (
                    f"the config of ready {subject} {problem}: restore the database and store from a backup")))
        if task.adapter_sha256 in intact:
            problem = adapter_problem(registry.store.get(task.adapter_sha256), base.config, task.adapter_size,
                                      head_size(task.task_type, task.labels))
            if problem:
                report.problems.append(Problem("task", task.name, (
                    f"the adapter of ready {subject} {problem}: restore the database and store from a backup")))

    positions = sorted(task.position for task in ready if task.position is not None)
    unplaced = [task.name for task in ready if task.position is None]
    if positions != list(range(1, len(ready) + 1)) or unplaced:
        report.problems.append(Problem("position", "tasks", (
            f"positions of the {len(ready)} ready tasks are {positions or '(none)'}"
            f"{f' with no position for {unplaced}' if unplaced else ''}, not 1..{len(ready)}: "
            "the database was altered; restore it from a backup")))
    for task in tasks:
        if task.status != "ready" and task.position is not None:
            report.problems.append(Problem("position", task.name, (
                f"{task.status} task {task.name!r} holds position {task.position}, which only ready tasks do: "
                "the database was altered; restore it from a backup")))


def check_current_versions(session, tasks: list[Task], report: Report) -> None:
    """Each ready task carries its current version's fields (registry.lifecycle moves both in one transaction)."""
    versions = {(v.task_id, v.version): v for v in session.scalars(select(TaskVersion))}
    for task in tasks:
        version = versions.get((task.id, task.current_version))
        carried = version is not None and all(getattr(task, f) == getattr(version, f) for f in CURRENT_FIELDS)
        if task.status == "ready" and not carried:
            report.problems.append(Problem("version", task.name, (
                f"ready task {task.name!r} does not carry the artifacts and score of its current version "
                f"{task.current_version}: the database was altered; restore it from a backup")))


def task_facts(task) -> dict[str, Any]:
    """The fields of a task row its config artifact must repeat."""
    return {key: getattr(task, key) for key in TASK_CONFIG_FIELDS}


def check_loaded_bases(base_sha: str, runs: list, report: Report) -> None:
    """Every run that recorded the base weights it loaded (`versions.base_sha256`) loaded this registry's base."""
    for run_id, versions in runs:
        loaded = (versions or {}).get("base_sha256")
        if loaded is not None and loaded != base_sha:
            report.problems.append(Problem("run", str(run_id), (
                f"run {run_id} trained on base weights {loaded[:12]}, not this registry's base {base_sha[:12]}: "
                "its task's scores are not comparable; re-add the task")))


def check_cache(registry: Opened, base, report: Report) -> list:
    """This host's cache (REGISTRY_HOME/cache): the entries that would be discarded when used."""
    found = cache.problems(registry.settings.cache_dir, base.sha256, base.config_sha256)
    for path, problem in found:
        report.problems.append(Problem("cache", str(path), (
            f"cache entry {path} {problem}: the next command that needs it fetches it again; "
            "or remove it now with `registry verify --prune`")))
    return [path for path, _ in found]


def check_store(registry: Opened, known: set[str], report: Report) -> tuple[list[str], int]:
    """Files of the store's layout that no artifact row names (stray temporary files included): their paths, and how
    many files. A file the registry never writes (not of its layout; its marker excepted) is reported, never
    removed."""
    store = registry.store
    unreferenced = []
    paths = store.files()
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if ownership.layout_sha(store, path) in known or ownership.relative(store, path) == ownership.MARKER:
            continue
        if not ownership.of_layout(store, path):
            report.problems.append(Problem("foreign", path, (
                f"store file {path} is not one the registry writes: left alone (prune never removes it); "
                "move it out of the store")))
            continue
        unreferenced.append(path)
        what = "a stray temporary file" if name.startswith(".tmp-") else "not in the database"
        report.problems.append(Problem("unreferenced", path, (
            f"store file {path} is {what} (left by an interrupted add-task?): "
            "remove it with `registry verify --prune`")))
    return unreferenced, len(paths)
