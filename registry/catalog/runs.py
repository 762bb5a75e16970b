"""Runs: list them, keep them alive with a heartbeat, sweep the ones whose process is gone.

A run records the host (its hostname) and pid of the process training it, and that process stamps its
heartbeat every REGISTRY_HEARTBEAT_SECONDS (default 15). The next command, on any host, marks a `running`
run `interrupted` at once when its process is provably dead (recorded on this very hostname, pid gone),
and otherwise once its heartbeat is older than REGISTRY_STALE_AFTER_SECONDS (default 120): the only sign
we have of a process on another host. Hosts of one registry must have distinct hostnames and clocks kept
in sync (NTP): the expiry compares one host's stamp with another's clock. Imports neither torch nor transformers.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import aliased

from registry.catalog.queries import find_task, iso
from registry.storage.core import Opened
from registry.errors import RegistryError
from registry.storage.models import Run, Task
from registry.storage.schema import utcnow

HEARTBEAT_SECONDS = 15.0
STALE_AFTER_SECONDS = 120.0


def heartbeat_seconds() -> float:
    """How often a training process stamps its heartbeat: REGISTRY_HEARTBEAT_SECONDS, default 15."""
    return positive_setting("REGISTRY_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)


def stale_after() -> timedelta:
    """How long a run may stay silent before any host takes it for dead: REGISTRY_STALE_AFTER_SECONDS, default
    120, and at least 3 heartbeats (a late beat or two must not kill a live run)."""
    seconds = positive_setting("REGISTRY_STALE_AFTER_SECONDS", STALE_AFTER_SECONDS)
    if seconds < 3 * heartbeat_seconds():
        raise RegistryError(
            f"REGISTRY_STALE_AFTER_SECONDS={seconds:g} is under 3 heartbeats (3 x "
            f"REGISTRY_HEARTBEAT_SECONDS = {3 * heartbeat_seconds():g}): raise it, or lower the heartbeat"
        )
    return timedelta(seconds=seconds)


def positive_setting(variable: str, default: float) -> float:
    """A positive number of seconds from the environment, or `default` when unset."""
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise RegistryError(f"{variable}={raw!r}: give a positive number of seconds")
    return value


def duration(span: timedelta) -> str:
    """`2 minutes`, `90 seconds`: how long a span is, in words."""
    seconds = span.total_seconds()
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} minute{'' if seconds == 60 else 's'}"
    return f"{seconds:g} seconds"


def this_host() -> str:
    """The name runs record as their host."""
    return socket.gethostname()


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether process `pid` on `host` is alive: True/False on this host, None where we cannot tell."""
    if not pid or host != this_host() or os.name != "posix":
        return None
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return None
    try:  # a killed child nobody has reaped yet still answers signal 0
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def as_utc(moment: datetime) -> datetime:
    """A timestamp read back from the database as aware UTC (SQLite returns naive UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def gone(host: str | None, pid: int | None, last_sign_of_life: datetime | None, now: datetime,
         silence: timedelta) -> str | None:
    """Why a run's process is gone, or None while it may be alive.

    Gone: its pid is dead on this host (known at once), or it has been silent for longer than `silence` on
    any host (a live add-task beats every heartbeat_seconds(); this also covers a pid reused by another process).
    """
    if process_alive(host, pid) is False:
        return f"process {pid} on {host} died (killed or crashed)"
    if last_sign_of_life is None or as_utc(last_sign_of_life) < now - silence:
        return f"no heartbeat for over {duration(silence)}: the process was killed or lost"
    return None


def sweep_stale_runs(registry: Opened) -> int:
    """Mark runs whose process is gone as interrupted and release their tasks' names; returns how many runs."""
    now, silence = utcnow(), stale_after()
    with registry.write() as session:
        ended: set[int] = set()
        for run in session.scalars(select(Run).where(Run.status == "running")).all():
            reason = gone(run.host, run.pid, run.heartbeat_at, now, silence)
            if reason:
                run.status, run.finished_at, run.error = "interrupted", now, run.error or reason
                ended.add(run.task_id)
        for task in session.scalars(select(Task).where(Task.status == "training")).all():
            if task.id in ended:
                task.status = "failed"
                continue
            if any(run.status == "running" for run in task.runs):
                continue
            # No run is open: the process died between two runs of a sweep or before publishing.
            last = task.runs[-1] if task.runs else None
            if last is None:
                reason = gone(None, None, task.created_at, now, silence)
            else:
                reason = gone(last.host, last.pid, last.finished_at or last.heartbeat_at, now, silence)
            if reason:
                task.status = "failed"
                if last is not None and last.error is None:
                    last.error = f"not published: {reason}"
    return len(ended)


class Heartbeat:
    """While open, a daemon thread stamps the task's running runs every `every` seconds, whatever the main thread
    does."""

    def __init__(self, registry: Opened, task_id: int, every: float | None = None):
        self.registry, self.task_id, self.every = registry, task_id, every or heartbeat_seconds()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, name=f"heartbeat-task-{task_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()

    def beat(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with self.registry.write() as session:
                    session.execute(update(Run).where(Run.task_id == self.task_id, Run.status == "running")
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # a missed beat is retried; the run only goes stale after stale_after()
                pass


def list_runs(registry: Opened, name: str | None = None) -> list[dict[str, Any]]:
    """Every run (of one task, or all), oldest first."""
    source = aliased(Task)
    query = (select(Run, Task.name, source.name).join(Task, Run.task_id == Task.id)
             .outerjoin(source, Run.init_task_id == source.id).order_by(Run.id))
    with registry.read() as session:
        if name is not None:
            query = query.where(Run.task_id == find_task(session, name).id)
        return [
            {
                "run": run.id,
                "task": task_name,
                "status": run.status,
                "from": f"{source_name} v{run.init_version}" if source_name else "scratch",
                "score": run.score,
                "device": run.device,
                "host": run.host,
                "pid": run.pid,
                "started_at": iso(run.started_at),
                "heartbeat_at": iso(run.heartbeat_at),
                "finished_at": iso(run.finished_at),
                "error": run.error,
            }
            for run, task_name, source_name in session.execute(query)
        ]
