"""Team mode: what several hosts on one PostgreSQL and one S3 store cost, and what one PostgreSQL takes.

    sudo python -m bench.team            # about 13 minutes on 2 busy CPU cores (root: it makes network namespaces)
    python -m bench.team --quick         # about 2 minutes: 1 round, 1 s per load level

(a) add-task wall time (the real CLI, tiny random BERT, 200 rows, 2 epochs), rounds interleaved:
    1 host on SQLite + a directory store (no namespace: the reference); 1 namespace host alone on
    PostgreSQL + S3; 3 namespace hosts adding one task each at once. The namespaces share this
    machine's cores, so 3 hosts cannot be faster than 1: the figure is what each host pays for the
    remote database and store, and how 3 concurrent add-tasks share the CPU.
(b) The store: put + get of a 90 MB blob (all-MiniLM-L6-v2's weights' size) and of a 200 kB one (an
    adapter) on a directory and on S3 (moto, loopback): what fetching a base or an adapter costs.
(c) Registry operations per second one PostgreSQL (loopback) takes with N concurrent client processes
    for publish (reserve + publish of a tiny adapter: add-task without the training; store on a local
    directory), then `list` (catalog.list_tasks, of the few hundred tasks published) and `history` of
    one task (catalog.history). The clients start, import and connect first; the cells run one after another.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import common
from bench.scale import task_data
from tests.helpers import PG_URL, make_settings, write_tiny_bert

HEADING = "Team mode: several hosts, one PostgreSQL, one S3 store"
DOCS = common.REPO / "docs" / "team.md"
ROWS, EPOCHS = 200, 2
CLIENTS = (1, 4, 8)


# --- (a) add-task on 1 and 3 hosts --------------------------------------------------------------

def add_args(name: str, data: Path) -> list[str]:
    return ["add-task", name, "--data", str(data), "--epochs", str(EPOCHS), "--batch-size", "16", "--quiet"]


def bench_hosts(work: Path, rounds: int) -> tuple[dict[str, list[float]], str | None]:
    """Wall seconds of add-task: local reference, 1 team host alone, each of 3 team hosts at once."""
    from sqlalchemy.engine import make_url

    from tests.netns import Hosts, namespaces_unavailable
    from tests.servers import MotoServer, Relay

    reason = namespaces_unavailable()
    if reason:
        return {}, reason
    base = write_tiny_bert(work / "tiny-bert")
    cleanups = []
    try:
        hosts = Hosts(3)
        cleanups.append(hosts.close)
        settings, drop = make_settings(work / "pg", "postgresql")
        cleanups.append(drop)
        url = make_url(settings.db_url)
        relay = Relay(hosts.gateway, (url.host, url.port or 5432))
        cleanups.append(relay.close)
        s3 = MotoServer(hosts.gateway, work / "moto.log")
        cleanups.append(s3.stop)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3.make_bucket(bucket)
        shared = {**common.offline_env(OMP_NUM_THREADS="1"), **s3.env(), "REGISTRY_STORE": f"s3://{bucket}/artifacts",
                  "REGISTRY_DB_URL": url.set(host=hosts.gateway, port=relay.port).render_as_string(hide_password=False)}
        local_env = {**common.offline_env(OMP_NUM_THREADS="1"), "REGISTRY_HOME": str(work / "local")}
        cli = [sys.executable, "-m", "cli"]

        def on_host(host: int, *args: str):
            return hosts.popen(host, [*cli, *args], env={**shared, "REGISTRY_HOME": str(work / f"host{host}")},
                               cwd=common.REPO)

        def finish(process) -> None:
            out, err = process.communicate(timeout=600)
            if process.returncode != 0:
                raise RuntimeError(f"{process.args[-8:]} exited {process.returncode}: {err[-2000:]}")

        common.run_command([*cli, "init", "--base", str(base)], env=local_env, cwd=common.REPO)
        finish(on_host(1, "init", "--base", str(base)))
        counter = iter(range(10_000))

        def local_add() -> float:
            i = next(counter)
            started = time.perf_counter()
            common.run_command([*cli, *add_args(f"t{i}", task_data(work / "data" / str(i), i, ROWS, ROWS // 4))],
                               env=local_env, cwd=common.REPO)
            return time.perf_counter() - started

        def team_adds(n: int) -> list[float]:
            jobs = []
            for host in range(1, n + 1):
                i = next(counter)
                jobs.append(
                    (
                        time.perf_counter(),
                        on_host(host, *add_args(f"t{i}", task_data(work / "data" / str(i), i, ROWS, ROWS // 4))),
                    )
                )
            walls = []
            for started, process in jobs:
                finish(process)
                walls.append(time.perf_counter() - started)
            return walls

        local_add(), team_adds(3)  # warm-up: every host has the base in its cache, .pyc files written
        times: dict[str, list[float]] = {"local": [], "team-1": [], "team-3": [], "team-3-batch": []}
        for round_ in range(rounds):
            for side in (("local", "team-1", "team-3") if round_ % 2 == 0 else ("team-3", "team-1", "local")):
                if side == "local":
                    times["local"].append(local_add())
                elif side == "team-1":
                    times["team-1"] += team_adds(1)
                else:
                    started = time.perf_counter()
                    times["team-3"] += team_adds(3)
                    times["team-3-batch"].append(time.perf_counter() - started)
        return times, None
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


# --- (b) the store ------------------------------------------------------------------------------

def bench_store(work: Path, repeats: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of put + get of a base-sized and an adapter-sized blob, directory vs S3 on loopback."""
    from registry.storage.store import Store
    from tests.servers import MotoServer

    s3 = MotoServer("127.0.0.1", work / "moto-loopback.log")
    try:
        os.environ.update(s3.env())
        blobs = {"90 MB (a base)": os.urandom(90 * 2**20), "200 kB (an adapter)": os.urandom(200 * 2**10)}
        results: dict[tuple[str, str], list[float]] = {}
        for kind in ("directory", "S3 (moto, loopback)"):
            for label, blob in blobs.items():
                results[(kind, label)] = []
                for i in range(repeats):
                    if kind == "directory":
                        store = Store(str(work / f"store-{uuid.uuid4().hex}"))
                    else:
                        bucket = f"bench-{uuid.uuid4().hex[:12]}"
                        s3.make_bucket(bucket)
                        store = Store(f"s3://{bucket}/artifacts")
                    data = blob[:-8] + i.to_bytes(8, "little")  # a new sha each time
                    started = time.perf_counter()
                    sha = store.put(data)
                    store.get(sha)
                    results[(kind, label)].append(time.perf_counter() - started)
        return results
    finally:
        s3.stop()


# --- (c) operations per second on one PostgreSQL ----------------------------------------------

def client(settings, k: int, cells: list[tuple[str, int]], seconds: float, ready, go, t0, counts) -> None:
    """Client process k: for each cell (op, n) with k < n, `op` as often as it can for `seconds` from its start;
    puts ((op, n), count). Every client imports and connects first, then waits for the common start."""
    from types import SimpleNamespace

    import torch

    from registry.catalog import queries as catalog, lifecycle
    from registry.training import recorder, tasks, train
    from registry.storage.core import open_registry

    registry = open_registry(settings)
    loaded = SimpleNamespace(task_type="classification", labels=("0", "1"), text_columns=("sentence",),
                             label_column="label", metric="accuracy", fingerprint="0" * 64, validation_from="bench")
    config = train.TrainConfig()
    with registry.read() as session:
        base = registry.base(session)
    catalog.list_tasks(registry)  # connected, queries warm

    def publish(name: str) -> None:
        task_id, run_id = lifecycle.reserve(registry, name, base.id, recorder.describe("bench", loaded),
                                            recorder.run_fields(config, loaded, torch.device("cpu")))
        state = {"head.weight": torch.rand(2, 4)}  # a distinct adapter each time
        result = train.FitResult(best_epoch=1, best_score=0.5, best_state=state)
        tasks.publish(registry, task_id, base, "bench", loaded, run_id, result, config, 8)

    ops = {
        "list": lambda name: catalog.list_tasks(registry),
        "history": lambda name: catalog.history(registry, FIRST_PUBLISHED),
        "publish": publish,
    }
    ready.put(k)
    go.wait()
    for i, (op, n) in enumerate(cells):
        if k >= n:
            continue
        start = t0.value + i * (seconds + GAP)
        time.sleep(max(0.0, start - time.time()))
        count = 0
        while time.time() < start + seconds:
            ops[op](f"{op}-{n}-{k}-{count}")
            count += 1
        counts.put(((op, n), count))
    registry.close()


GAP = 0.5  # seconds between two cells
FIRST_PUBLISHED = f"publish-{CLIENTS[0]}-0-0"  # the task whose history the history cells read


def bench_database(work: Path, seconds: float) -> tuple[dict[tuple[str, int], float], str | None]:
    """Operations per second, all clients together, for each operation and number of clients."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return {}, f"PostgreSQL at {PG_URL} unreachable ({type(exc).__name__})"
    from registry.model import checkpoint

    settings, drop = make_settings(work / "ops", "postgresql")
    processes = []
    try:
        checkpoint.init(settings, str(write_tiny_bert(work / "ops-bert")))
        context = multiprocessing.get_context("spawn")
        ready, counts, go, t0 = context.Queue(), context.Queue(), context.Event(), context.Value("d", 0.0)
        cells = [
            (op, n) for op in ("publish", "list", "history") for n in CLIENTS
        ]  # list and history: the published tasks
        processes = [context.Process(target=client, args=(settings, k, cells, seconds, ready, go, t0, counts))
                     for k in range(max(CLIENTS))]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=600)
        t0.value = time.time() + GAP
        go.set()
        expected = sum(n for _, n in cells)
        totals: dict[tuple[str, int], int] = {}
        for _ in range(expected):
            cell, count = counts.get(timeout=len(cells) * (seconds + GAP) + 120)
            totals[cell] = totals.get(cell, 0) + count
        return {cell: total / seconds for cell, total in totals.items()}, None
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        drop()


# --- report ------------------------------------------------------------------------------------

def report(hosts: dict, hosts_skip: str | None, store: dict, rates: dict, rates_skip: str | None, args) -> str:
    parts = []
    if hosts_skip:
        parts.append(f"(a) skipped: {hosts_skip}.")
    else:
        local = statistics.median(hosts["local"])
        rows = [["1 host, SQLite + directory store (reference)", common.spread(hosts["local"]), "1.00"],
                ["1 namespace host alone, PostgreSQL + S3", common.spread(hosts["team-1"]),
                 f"{statistics.median(hosts['team-1']) / local:.2f}"],
                ["3 namespace hosts at once, each add-task", common.spread(hosts["team-3"]),
                 f"{statistics.median(hosts['team-3']) / local:.2f}"],
                ["3 namespace hosts at once, all three done", common.spread(hosts["team-3-batch"]),
                 f"{statistics.median(hosts['team-3-batch']) / local:.2f}"]]
        parts.append(f"(a) add-task wall time, tiny BERT, {ROWS} rows, {EPOCHS} epochs ({len(hosts['local'])} rounds, "
                     "median (min–max)); the namespaces share this machine's cores:\n\n"
                     + common.markdown_table(["", "wall time", "/ reference"], rows))
    rows = [[kind, label, common.spread(times)] for (kind, label), times in store.items()]
    parts.append("(b) store: put (write, read back, verify) + get (read, verify):\n\n"
                 + common.markdown_table(["store", "blob", "put + get"], rows))
    if rates_skip:
        parts.append(f"(c) skipped: {rates_skip}.")
    else:
        rows = [[op, *(f"{rates[(op, n)]:.0f}" for n in CLIENTS)] for op in ("list", "history", "publish")]
        parts.append(f"(c) registry operations per second on one PostgreSQL (loopback), all clients together, "
                     f"{args.seconds:g} s per cell:\n\n"
                     + common.markdown_table(["operation", *(f"{n} client{'s' * (n > 1)}" for n in CLIENTS)], rows))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.team", description=__doc__.splitlines()[0])
    common.add_docs_options(parser)
    parser.add_argument("--rounds", type=int, default=None, help="add-task rounds (default 3, quick 1).")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load level (default 4, quick 1).")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    info = common.machine()
    work = Path(tempfile.mkdtemp(prefix="bench-team-"))
    try:
        hosts, hosts_skip = bench_hosts(work, args.rounds)
        store = bench_store(work, args.rounds)
        rates, rates_skip = bench_database(work, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load average (1 min, at end)"] = common.load_average()
    text = common.section(
        HEADING,
        command=common.command_line(),
        info=info,
        body=report(hosts, hosts_skip, store, rates, rates_skip, args),
    )
    print("\n" + text)
    if common.write_docs(args):
        common.update_docs(HEADING, text, path=DOCS)
        print(f"(section '## {HEADING}' written to {DOCS.relative_to(common.REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
