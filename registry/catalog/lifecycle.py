"""The life of a task in the database: a name reserved, versions published, the current one moved, retired, restored.

Every transaction that decides which tasks exist, in which order and with which current version is
drawn here, and nowhere else: `reserve` (add-task takes a name), `publish` (add-task's version, or
an import's tasks, become ready), `promote`, `retire` and `restore`. Correctness under concurrent
writers comes from the database: a task name, a position and a (task, version) pair are unique, and
`publish` takes the next free position and version number again when another writer took them first.

A task row holds its description (type, labels, columns, metric), its position and a pointer to its
current version; its data source, adapter, config, size and score are those of that version, copied from
task_versions in the transaction that moves the pointer. Nothing is overwritten: versions are never updated,
and every move of the pointer (a version published as current, a promotion, a retirement, a restoration)
appends a task_events row, in the same transaction that updates the task row's pointer or retirement mark.
Nothing here imports torch.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from registry.catalog.queries import find_task
from registry.storage.core import Opened
from registry.errors import RegistryError, RetireError, TaskExists, VersionError
from registry.storage.models import Artifact, Run, Task, TaskVersion
from registry.catalog.runs import this_host
from registry.storage.schema import task_events, utcnow

PUBLISH_ATTEMPTS = 20
# The fields of a version that the task row carries while that version is current.
CURRENT_FIELDS = ("data_source", "adapter_sha256", "config_sha256", "adapter_size", "score", "trainable_params")


@dataclass(frozen=True)
class Description:
    """What a task is: the same for all its versions."""

    data_source: str
    task_type: str
    metric: str
    text_columns: list[str]
    label_column: str
    labels: list[str] | None


@dataclass(frozen=True)
class Release:
    """One version to publish: its stored files, its validation score, and where it came from."""

    adapter_sha256: str
    config_sha256: str
    adapter_size: int
    score: float
    trainable_params: int | None
    data_source: str
    data_fingerprint: str | None = None
    run_id: int | None = None
    embedding_sha256: str | None = None  # the text embedding add-task stores (none for an imported task)


@dataclass(frozen=True)
class Publication:
    """A release for one task: a task reserved by `reserve` or a ready one (`task_id`), or a new task (`name`).

    A first version is always current. A later one becomes current with `promote`, or when it scored at
    least as well as `compared_with` (the current version it was measured against) and that version is
    still current when it is published; `why` says how it was decided.
    """

    release: Release
    task_id: int | None = None
    name: str | None = None
    description: Description | None = None
    promote: bool = False
    compared_with: int | None = None
    why: str = "first version"


@dataclass(frozen=True)
class Published:
    """What `publish` did for one publication."""

    task_id: int
    version: int
    current: bool
    why: str


def who() -> str:
    """The user and host recorded with each move of a task's pointer."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. a container)
        user = "unknown"
    return f"{user}@{this_host()}"


def take_name(session, name: str, base_id: int, description: Description, **fields) -> int:
    """The id of task `name`, a failed row revived or a new row, with `description` and `fields`.

    The name is unique: a concurrent writer that took it makes the flush raise IntegrityError.
    """
    values = dict(base_id=base_id, **vars(description), created_at=utcnow(), **fields)
    revived = session.execute(update(Task).where(Task.name == name, Task.status == "failed").values(**values)).rowcount
    if revived:
        return session.scalars(select(Task.id).where(Task.name == name)).one()
    task = Task(name=name, **values)
    session.add(task)
    session.flush()
    return task.id


def reserve(registry: Opened, name: str, base_id: int, description: Description, run: dict) -> tuple[int, int]:
    """One transaction: task `name` in state `training` (a failed row revived, or a new one) and its first run.

    A concurrent add of the same name fails here with TaskExists. Returns the task's and the run's ids.
    """
    try:
        with registry.write() as session:
            task_id = take_name(session, name, base_id, description, status="training")
            opened = Run(task_id=task_id, **run)
            session.add(opened)
            session.flush()
            return task_id, opened.id
    except IntegrityError:
        raise TaskExists(f"task {name!r} already exists (another process is adding it): pick another name") from None


def publish(registry: Opened, publications: Sequence[Publication], artifacts: Sequence[tuple[str, str, int]], *,
            check: Callable[[object], None] = lambda session: None) -> list[Published]:
    """One transaction: record `artifacts` (sha256, kind, size), then publish every publication, in order.

    A new task takes the next position; every version the next number of its task. When another writer
    took the same position, version number or name first, the transaction is run again (`check` runs
    inside it each time, to refuse what another writer made impossible meanwhile).
    """
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            with registry.write() as session:
                check(session)
                for sha, kind, size in artifacts:
                    if session.get(Artifact, sha) is None:
                        session.add(Artifact(sha256=sha, kind=kind, size=size))
                session.flush()
                base_id = registry.base(session).id
                return [_publish_one(session, publication, base_id) for publication in publications]
        except IntegrityError:
            time.sleep(0.05 * (attempt + 1))
    names = ", ".join(repr(p.name) for p in publications if p.name) or f"{len(publications)} task(s)"
    raise RegistryError(f"could not publish {names}: other writers took the same name, position or version number "
                        f"{PUBLISH_ATTEMPTS} times: run the command again")


def _publish_one(session, publication: Publication, base_id: int) -> Published:
    release = publication.release
    if publication.task_id is None:
        task_id = take_name(session, publication.name, base_id, publication.description, status="training")
    else:
        task_id = publication.task_id
    task = session.get(Task, task_id)
    if task.status == "failed":  # swept as interrupted meanwhile (silent for over stale_after()): not ours any more
        raise RegistryError(f"task {task.name!r} was marked interrupted while it trained "
                            "(no heartbeat reached the database): run add-task again")
    first = task.status == "training"
    version = (session.scalar(select(func.max(TaskVersion.version)).where(TaskVersion.task_id == task_id)) or 0) + 1
    current, why = True, publication.why
    if not first and not publication.promote:
        current = publication.compared_with is not None and task.current_version == publication.compared_with
        if publication.compared_with is not None and not current:
            why = (f"candidate: it beat version {publication.compared_with}, but version {task.current_version} "
                   f"became current while it trained: compare them, then `registry promote {task.name} --version N`")
    now = utcnow()
    row = TaskVersion(task_id=task_id, version=version, run_id=release.run_id, data_source=release.data_source,
                      data_fingerprint=release.data_fingerprint, adapter_size=release.adapter_size,
                      adapter_sha256=release.adapter_sha256, config_sha256=release.config_sha256, score=release.score,
                      trainable_params=release.trainable_params, why=why, created_at=now,
                      embedding_sha256=release.embedding_sha256)
    session.add(row)
    session.flush()
    if first:
        position = (session.scalar(select(func.max(Task.position))) or 0) + 1
        session.execute(update(Task).where(Task.id == task_id).values(status="ready", position=position, ready_at=now))
    if current:
        _point(session, task_id, row)
        _log(session, task_id, "publish", why, now, version)
    if release.run_id is not None:  # last: the run names the artifact it produced
        session.execute(update(Run).where(Run.id == release.run_id).values(adapter_sha256=release.adapter_sha256))
    return Published(task_id=task_id, version=version, current=current, why=why)


def _point(session, task_id: int, version: TaskVersion) -> None:
    """Make `version` the task's current one: the pointer and the fields the task row carries for it."""
    session.execute(update(Task).where(Task.id == task_id).values(
        current_version=version.version, **{field: getattr(version, field) for field in CURRENT_FIELDS}))


def _log(session, task_id: int, action: str, why: str | None, at, version: int | None = None) -> str:
    """Append a task_events row: `action` done to the task now by this user and host. Returns who did it."""
    by = who()
    session.execute(insert(task_events).values(task_id=task_id, version=version, action=action, at=at, by=by, why=why))
    return by


def promote(registry: Opened, name: str, version: int, why: str | None = None) -> dict:
    """Move task `name`'s current version to `version` (forward or back), recording who, when and why."""
    with registry.write() as session:
        task = find_task(session, name, ready=True)  # a retired task is restored first
        row = _version(session, task, version)
        if task.current_version == version:
            raise VersionError(f"version {version} of task {name!r} is already current: nothing to promote")
        now = utcnow()
        reason = why or f"promoted from version {task.current_version} with `registry promote`"
        _point(session, task.id, row)
        by = _log(session, task.id, "promote", reason, now, version)
        return {"task": name, "version": version, "previous": task.current_version, "score": row.score,
                "promoted_by": by, "promoted_at": now.isoformat(timespec="seconds"), "why": reason}


def _version(session, task, version: int) -> TaskVersion:
    """Version `version` of `task`, or VersionError listing the ones it has."""
    mine = TaskVersion.task_id == task.id
    row = session.scalars(select(TaskVersion).where(mine, TaskVersion.version == version)).first()
    if row is None:
        known = session.scalars(select(TaskVersion.version).where(mine).order_by(TaskVersion.version)).all()
        raise VersionError(f"task {task.name!r} has no version {version} (its versions: {', '.join(map(str, known))}): "
                             f"pick one of them, see `registry show {task.name}`")
    return row


def retire(registry: Opened, name: str, why: str | None = None) -> dict:
    """Hide task `name` from list, export and serving; its versions and history stay. Who, when and why are logged."""
    with registry.write() as session:
        task = find_task(session, name, ready=True, retired=True)
        now = utcnow()  # the condition holds in the UPDATE: of two concurrent retires, one logs an event
        if task.retired_at is not None or not session.execute(
                update(Task).where(Task.id == task.id, Task.retired_at.is_(None)).values(retired_at=now)).rowcount:
            raise RetireError(f"task {name!r} is already retired: `registry restore {name}` brings it back")
        by = _log(session, task.id, "retire", why, now)
        return {"task": name, "retired_at": now.isoformat(timespec="seconds"), "by": by, "why": why}


def restore(registry: Opened, name: str, why: str | None = None) -> dict:
    """Undo `retire`: task `name` is listed, exported and served again. Who, when and why are logged."""
    with registry.write() as session:
        task = find_task(session, name, ready=True, retired=True)
        if task.retired_at is None or not session.execute(
                update(Task).where(Task.id == task.id, Task.retired_at.isnot(None)).values(retired_at=None)).rowcount:
            raise RetireError(f"task {name!r} is not retired: nothing to restore")
        now = utcnow()
        by = _log(session, task.id, "restore", why, now)
        return {"task": name, "retired_at": None, "restored_at": now.isoformat(timespec="seconds"), "by": by,
                "why": why}

