"""Team mode on several hosts: network + UTS namespaces (each its own hostname and REGISTRY_HOME) sharing one
PostgreSQL and one S3 server (moto) through a private bridge. Everything is made and removed by the fixtures.

PostgreSQL is the machine's server, reached from the bridge through a relay in this process (the server
itself is not reconfigured); moto listens on the bridge address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import REPO
from tests.helpers import make_settings, write_tiny_bert
from tests.netns import Hosts, namespaces_unavailable
from tests.servers import MotoServer, Relay
from tests.test_reliability import add_args, write_data

HEARTBEAT, STALE_AFTER = 1, 12  # seconds: fast for the test (defaults 15 and 120)
TIMEOUT = 600  # any one command on a host


@dataclass
class Team:
    hosts: Hosts
    env: dict[str, str]  # shared by every host: database, store, S3 endpoint
    root: Path
    data: Path

    def home(self, host: int) -> Path:
        return self.root / f"host{host}"

    def start(self, host: int, *args: str) -> subprocess.Popen:
        env = {**self.env, "REGISTRY_HOME": str(self.home(host))}
        return self.hosts.popen(host, [sys.executable, "-m", "cli", *args], env=env, cwd=REPO)

    def run(self, host: int, *args: str) -> subprocess.CompletedProcess:
        return finish(self.start(host, *args))

    def json(self, host: int, *args: str):
        result = self.run(host, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def finish(process: subprocess.Popen, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def team(tmp_path_factory, pg_skip_reason):
    """4 hosts on one PostgreSQL schema and one S3 bucket; a registry initialised from host 1."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"several-host tests skipped: {reason}")
    if pg_skip_reason:
        pytest.skip(pg_skip_reason)
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make install)")
    root = tmp_path_factory.mktemp("hosts")
    cleanups = []
    try:
        hosts = Hosts(4)
        cleanups.append(hosts.close)
        settings, drop_schema = make_settings(root, "postgresql")
        cleanups.append(drop_schema)
        url = make_url(settings.db_url)
        relay = Relay(hosts.gateway, (url.host, url.port or 5432))
        cleanups.append(relay.close)
        s3 = MotoServer(hosts.gateway, root / "moto.log")
        cleanups.append(s3.stop)
        bucket = f"team-{uuid.uuid4().hex[:12]}"
        s3.make_bucket(bucket)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(root)),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "REGISTRY_DB_URL": url.set(host=hosts.gateway, port=relay.port).render_as_string(hide_password=False),
            "REGISTRY_STORE": f"s3://{bucket}/artifacts",
            **s3.env(),
            "REGISTRY_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "REGISTRY_STALE_AFTER_SECONDS": str(STALE_AFTER),
        }
        team = Team(hosts=hosts, env=env, root=root, data=write_data(root / "data.tsv"))
        base = write_tiny_bert(root / "tiny-bert")
        result = team.run(1, "init", "--base", str(base))
        assert result.returncode == 0, result.stderr
        yield team
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture(scope="module")
def concurrent(team):
    """Hosts 1-3 each add a task of their own and all race for 'shared', at once."""
    jobs = [(1, "alpha"), (2, "beta"), (3, "gamma"), (1, "shared"), (2, "shared"), (3, "shared")]
    processes = [team.start(host, *add_args(name, team.data, seed=i)) for i, (host, name) in enumerate(jobs)]
    results = [finish(process) for process in processes]
    return jobs, results


def test_distinct_tasks_land_at_unique_positions_and_one_host_wins_a_name(team, concurrent):
    jobs, results = concurrent
    for (host, name), result in zip(jobs[:3], results[:3]):
        assert result.returncode == 0, (host, name, result.stderr)
    shared = [result for (_, name), result in zip(jobs, results) if name == "shared"]
    assert sorted(r.returncode for r in shared) == [0, 1, 1], [r.stderr for r in shared]
    for loser in (r for r in shared if r.returncode):
        assert loser.stderr.strip() in {f"Error: task 'shared' already exists ({why}): pick another name"
                                         for why in ("training", "another process is adding it", "ready")}, loser.stderr

    listed = team.json(2, "list")
    assert sorted(t["name"] for t in listed) == ["alpha", "beta", "gamma", "shared"]
    assert sorted(t["position"] for t in listed) == [1, 2, 3, 4]
    runs = {run["task"]: run for run in team.json(3, "runs")}
    assert {name: runs[name]["host"] for name in ("alpha", "beta", "gamma")} == {
        "alpha": team.hosts.hostname(1), "beta": team.hosts.hostname(2), "gamma": team.hosts.hostname(3)}
    verified = team.run(3, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def texts() -> list[str]:
    return ["good great love this", "awful bad hate it", "very good film", "not good the movie"]


def test_predict_on_another_host_and_export_on_a_fourth_match_the_adding_host(team, concurrent):
    on_adder = team.json(1, "predict", "--task", "alpha", *texts())
    on_other = team.json(3, "predict", "--task", "alpha", *texts())  # host 3 never had alpha: fetched from S3
    assert on_other == on_adder

    bundle = team.root / "host4-bundle"  # outside every registry home: export never writes inside one
    exported = team.run(4, "export", "--tasks", "all", "--output", str(bundle))
    assert exported.returncode == 0, exported.stderr
    from_bundle = team.json(4, "predict", "--bundle", str(bundle), "--task", "alpha", *texts())
    assert [(r["text"], r["label"]) for r in from_bundle] == [(r["text"], r["label"]) for r in on_adder]
    for mine, theirs in zip(from_bundle, on_adder):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)


def run_of(team, host: int, name: str) -> dict | None:
    runs = [run for run in team.json(host, "runs") if run["task"] == name]
    return runs[-1] if runs else None


@pytest.mark.parametrize("kill", ["add-task", "whole host"])
def test_a_host_killed_mid_training_is_swept_by_another_after_its_heartbeat_expires(team, concurrent, kill):
    victim = f"victim-{kill.replace(' ', '-')}"
    process = team.start(1, *add_args(victim, team.data, epochs=200))
    deadline = time.monotonic() + TIMEOUT
    while (run := run_of(team, 2, victim)) is None or run["status"] != "running" or not run["heartbeat_at"]:
        assert process.poll() is None and time.monotonic() < deadline, finish(process).stderr
        time.sleep(0.5)
    time.sleep(2 * HEARTBEAT)  # training under way, beating
    if kill == "add-task":
        process.kill()
    else:
        assert process.pid in team.hosts.kill_all(1) or process.poll() is not None
    process.wait(timeout=30)
    killed_at = time.monotonic()

    # Host 2 cannot see host 1's processes: the run stays `running` until its heartbeat is STALE_AFTER old.
    swept = team.run(2, "runs", "--sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    if time.monotonic() - killed_at < STALE_AFTER - 2:
        assert [r["status"] for r in json.loads(swept.stdout) if r["task"] == victim] == ["running"]
        assert swept.stderr.strip() == "marked 0 runs interrupted"
    time.sleep(max(0.0, STALE_AFTER + HEARTBEAT - (time.monotonic() - killed_at)))
    swept = team.run(2, "runs", "--sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    run = [r for r in json.loads(swept.stdout) if r["task"] == victim][-1]
    assert run["status"] == "interrupted" and run["host"] == team.hosts.hostname(1)
    assert run["error"] == f"no heartbeat for over {STALE_AFTER} seconds: the process was killed or lost"
    assert victim not in [t["name"] for t in team.json(3, "list") if t["status"] == "ready"]

    again = team.run(3, *add_args(victim, team.data))  # the name is free again, on another host
    assert again.returncode == 0, again.stderr
    verified = team.run(2, "verify", "--prune")
    assert verified.returncode == 0, verified.stdout + verified.stderr
