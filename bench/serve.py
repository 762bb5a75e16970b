"""`registry serve` under load on the real base: batching, sharing the base, memory and hot-add, side by side in
one run.

    python -m bench.serve                     # MiniLM + 5 GLUE tasks (200 rows, 1 epoch; trained once into --workdir)
    python -m bench.serve --workdir DIR       # keep the registry and bundles in DIR: a second run skips training
    python -m bench.serve --quick             # fewer requests: checks that it runs (docs untouched)

Servers are real `registry serve` processes on 127.0.0.1 (free ports); the load is this module's
small asyncio client: one keep-alive HTTP/1.1 connection per client, each sending requests of one
dev-set input (tasks spread over clients) back to back. Throughput and latency are what the clients
measured, from sending a request to reading its whole answer. Every run is bounded in requests and seconds.

1. dynamic batching (default limits) against the same server with --max-batch-size 1, at 1, 8 and 32 clients;
2. one 5-task server against 5 single-task servers (one base each, one torch thread each so that together they
   do not oversubscribe the cores more than needed), the same 32 clients: throughput and total RSS;
3. RSS of a server holding 1, 5 and 20 tasks (20 = the 5 trained adapters, each under 4 names, in one bundle);
4. hot-add: seconds from `registry add-task` publishing a task (its ready_at) to the first answer for it,
   while 8 clients load the other tasks; every request they sent must succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import timezone
from pathlib import Path

from bench import common
from bench.bundle import TASKS, build_registry, sample_items
from tests.helpers import stop

HEADING = "Serving: dynamic batching, one base for many tasks, memory, hot-add"
GLUE = common.REPO.parent / "shared" / "data" / "glue"
MB = 1e6


# --- servers -----------------------------------------------------------------------------------

class Server:
    """A `registry serve` process on a free loopback port."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        seen = []
        for line in process.stderr:  # until it says where it listens (it exits, closing stderr, if it cannot)
            seen.append(line)
            found = re.search(r"on http://([\d.]+):(\d+)", line)
            if found:
                break
        else:
            raise RuntimeError(f"the server did not start: {''.join(seen)[-2000:]}")
        self.host, self.port = found.group(1), int(found.group(2))
        self.said: list[tuple[float, str]] = []  # (time.time(), line) of what it writes after starting
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        for line in self.process.stderr:  # keeps its stderr flowing
            self.said.append((time.time(), line.strip()))

    def rss(self) -> int:
        """Resident bytes now (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


THREADS: dict[str, int | None] = {"server": None}  # torch threads of every server (--threads); None: torch's own


@contextmanager
def serving(home: Path, *args: str, threads: int | None = None):
    """Start `registry serve --port 0 ARGS` for the registry at `home` (on `threads` torch threads, default --threads);
    stopped (SIGTERM, then SIGKILL) at the end."""
    threads = threads or THREADS["server"]
    command = [
        *common.registry_command(),
        "--home",
        str(home),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--device",
        "cpu",
        *args,
    ]
    env = common.offline_env(**({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    process = subprocess.Popen(command, env=env, cwd=common.REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        server = Server(process)
        asyncio.run(wait_ready(server))
        yield server
    finally:
        stop(process, 60)


async def wait_ready(server: Server, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status, _ = await request(server.host, server.port, "GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server never became ready")


# --- the load: a small asyncio HTTP/1.1 client ----------------------------------------------------

async def exchange(reader, writer, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request on an open keep-alive connection: (status, body)."""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return int(head.split(b" ", 2)[1]), await reader.readexactly(length)


async def request(host: str, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request on a connection of its own."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await exchange(reader, writer, method, path, body)
    finally:
        writer.close()


def body_of(task: str, text) -> bytes:
    item = (
        {"task": task, "text": text} if isinstance(text, str) else {"task": task, "text": text[0], "text_pair": text[1]}
    )
    return json.dumps({"inputs": [item]}).encode()


async def load(
    clients: list[tuple[Server, list[bytes]]], requests: int, seconds: float, stop: asyncio.Event | None = None
) -> dict:
    """Clients sending their bodies in turn until `requests` in all, `seconds`, or `stop`: what they measured."""
    latencies: list[float] = []
    failures: list[int] = []
    left = [requests]
    deadline = time.monotonic() + seconds

    async def client(server: Server, bodies: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        sent = 0
        try:
            while left[0] > 0 and time.monotonic() < deadline and not (stop and stop.is_set()):
                left[0] -= 1
                started = time.perf_counter()
                status, _ = await exchange(reader, writer, "POST", "/v1/predict", bodies[sent % len(bodies)])
                latencies.append(time.perf_counter() - started)
                sent += 1
                if status != 200:
                    failures.append(status)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(server, bodies) for server, bodies in clients))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failed": len(failures),
        "seconds": elapsed,
        "throughput": len(latencies) / elapsed,
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def spread_clients(n: int, servers_by_task: dict[str, Server], bodies_by_task: dict[str, list[bytes]]) -> list:
    """n clients, client i on task i mod 5 (its server and its dev-set inputs)."""
    names = list(bodies_by_task)
    return [(servers_by_task[names[i % len(names)]], bodies_by_task[names[i % len(names)]]) for i in range(n)]


async def warm(server: Server, bodies_by_task: dict[str, list[bytes]]) -> None:
    for bodies in bodies_by_task.values():
        for body in bodies[:4]:
            status, answer = await request(server.host, server.port, "POST", "/v1/predict", body)
            if status not in (200, 404):
                raise RuntimeError(f"warm-up answered {status}: {answer[:200]}")


# --- the comparisons -----------------------------------------------------------------------------

def batching(bundle: Path, bodies: dict, requests: int, seconds: float) -> list[list]:
    """1: dynamic batching against --max-batch-size 1, at 1, 8 and 32 clients, servers up side by side."""
    rows = []
    with serving(bundle.parent, "--bundle", str(bundle)) as batched, \
            serving(bundle.parent, "--bundle", str(bundle), "--max-batch-size", "1") as single:
        for server in (batched, single):
            asyncio.run(warm(server, bodies))
        for clients in (1, 8, 32):
            measured = {}
            for name, server in (("dynamic", batched), ("batch 1", single)) if clients % 2 == 0 else \
                    (("batch 1", single), ("dynamic", batched)):
                everyone = {task: server for task in bodies}
                measured[name] = asyncio.run(load(spread_clients(clients, everyone, bodies), requests, seconds))
            for name in ("dynamic", "batch 1"):
                m = measured[name]
                ratio = m["throughput"] / measured["batch 1"]["throughput"]
                rows.append(
                    [
                        clients,
                        name,
                        m["requests"],
                        m["failed"],
                        f"{m['throughput']:.1f}",
                        f"{m['p50'] * 1e3:.0f}",
                        f"{m['p99'] * 1e3:.0f}",
                        f"{ratio:.2f}x",
                    ]
                )
            print(rows[-2], rows[-1], file=sys.stderr)
    return rows


def sharing(bundle: Path, bodies: dict, requests: int, seconds: float) -> tuple[list[list], float, float]:
    """2: one 5-task server against 5 single-task servers under the same 32 clients; throughput and total RSS."""
    names = list(bodies)
    with ExitStack() as stack:
        shared = stack.enter_context(serving(bundle.parent, "--bundle", str(bundle)))
        singles = {
            name: stack.enter_context(serving(bundle.parent, "--bundle", str(bundle), "--tasks", name, threads=1))
            for name in names
        }
        asyncio.run(warm(shared, bodies))
        for name, server in singles.items():
            asyncio.run(warm(server, {name: bodies[name]}))
        shared_load = asyncio.run(load(spread_clients(32, {n: shared for n in names}, bodies), requests, seconds))
        singles_load = asyncio.run(load(spread_clients(32, singles, bodies), requests, seconds))
        shared_again = asyncio.run(load(spread_clients(32, {n: shared for n in names}, bodies), requests, seconds))
        shared_rss = shared.rss()
        singles_rss = sum(server.rss() for server in singles.values())
    shared_tp = statistics.mean([shared_load["throughput"], shared_again["throughput"]])
    rows = [
        [
            "one 5-task server (two runs, before and after)",
            f"{shared_load['throughput']:.1f}, {shared_again['throughput']:.1f}",
            f"{shared_load['p50'] * 1e3:.0f}",
            f"{shared_load['failed'] + shared_again['failed']}",
            f"{shared_rss / MB:.0f}",
        ],
        [
            "5 single-task servers (1 torch thread each)",
            f"{singles_load['throughput']:.1f}",
            f"{singles_load['p50'] * 1e3:.0f}",
            f"{singles_load['failed']}",
            f"{singles_rss / MB:.0f}",
        ],
    ]
    return rows, shared_tp / singles_load["throughput"], shared_rss / singles_rss


def widened(bundle: Path, target: Path, copies: int) -> Path:
    """A bundle holding each task of `bundle` under `copies` names (same adapter bytes): many tasks without
    training them."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    tasks = []
    for copy in range(copies):
        for entry in manifest["tasks"]:
            name = entry["name"] if copy == 0 else f"{entry['name']}-{copy}"
            moved = {**entry, "name": name, "position": len(tasks) + 1,
                     "adapter": f"adapters/{name}.safetensors", "config": f"adapters/{name}.json"}
            for key in ("adapter", "config"):
                if copy:
                    shutil.copyfile(target / entry[key], target / moved[key])
                    manifest["files"][moved[key]] = manifest["files"][entry[key]]
            tasks.append(moved)
    manifest["tasks"] = tasks
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def memory(bundle: Path, bodies: dict) -> list[list]:
    """3: RSS of servers holding 1, 5 and 20 tasks, each after answering requests of every task it holds."""
    wide = widened(bundle, bundle.parent / "bundle-20", 4)
    names = list(bodies)
    rows = []
    for label, path, tasks in (("1 task", bundle, names[:1]), ("5 tasks", bundle, names), ("20 tasks", wide, None)):
        args = ["--bundle", str(path)] + (["--tasks", ",".join(tasks)] if tasks else [])
        with serving(bundle.parent, *args) as server:
            served = json.loads(asyncio.run(request(server.host, server.port, "GET", "/v1/tasks"))[1])
            work = {task["name"]: bodies[task["name"].split("-")[0]] for task in served}
            asyncio.run(warm(server, work))
            rows.append([label, len(served), server.rss()])
    base = rows[0][2]
    return [[label, n, f"{rss / MB:.0f}", f"{rss / base:.3f}x"] for label, n, rss in rows]



def hot_add(bundle4: Path, home: Path, bodies: dict, new: tuple[str, str], seconds: float) -> dict:
    """4: serve a registry of 4 tasks under 8 clients; `registry add-task` a 5th; seconds from its ready_at to its
    first answer."""
    from sqlalchemy import create_engine, select

    from registry.storage import schema

    if home.exists():
        shutil.rmtree(home)
    common.run_command(
        [*common.registry_command(), "--home", str(home), "import", str(bundle4)], env=common.offline_env()
    )
    name, directory = new
    probe = bodies[name][0]
    with serving(home) as server:
        old = {task: bodies[task] for task in bodies if task != name}
        asyncio.run(warm(server, old))

        async def run() -> dict:
            stop = asyncio.Event()
            loaded = asyncio.create_task(load(spread_clients(8, {t: server for t in old}, old), 10 ** 9, seconds, stop))
            add = await asyncio.create_subprocess_exec(
                *common.registry_command(), "--home", str(home), "add-task", name, "--data", str(GLUE / directory),
                "--max-train-samples", "64", "--epochs", "1", "--max-length", "64", "-q",
                env=common.offline_env(), cwd=common.REPO, stdout=asyncio.subprocess.DEVNULL, stderr=log)
            answered = None
            reader, writer = await asyncio.open_connection(server.host, server.port)
            while answered is None:
                status, _ = await exchange(reader, writer, "POST", "/v1/predict", probe)
                if status == 200:
                    answered = time.time()
                else:
                    await asyncio.sleep(0.05)
            writer.close()
            if await add.wait() != 0:
                raise RuntimeError(f"add-task failed: {(home / 'add-task.log').read_text()[-2000:]}")
            exited = time.time()
            await asyncio.sleep(2)  # the load goes on a little after the swap
            stop.set()
            return {"answered": answered, "exited": exited, "load": await loaded}

        with open(home / "add-task.log", "w") as log:
            measured = asyncio.run(run())
    engine = create_engine(f"sqlite:///{home / 'registry.db'}")
    with engine.connect() as connection:
        ready_at = connection.execute(select(schema.tasks.c.ready_at).where(schema.tasks.c.name == name)).scalar_one()
    engine.dispose()
    published = (ready_at if ready_at.tzinfo else ready_at.replace(tzinfo=timezone.utc)).timestamp()
    swapped = [moment - published for moment, line in server.said if "now serving" in line]
    return {"answered_after": measured["answered"] - published, "logged_after": swapped[0],
            "exited_after": measured["exited"] - published, "load": measured["load"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=200, help="Training rows per task.")
    parser.add_argument("--requests", type=int, help="Requests per measured load (default 600, --quick 60).")
    parser.add_argument("--seconds", type=float, default=60, help="Most seconds per measured load.")
    parser.add_argument(
        "--workdir", type=Path, help="Keep the registry and bundles here and reuse them on the next run."
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per server (default: torch's own); 1 gives steadier ratios "
        "on a machine shared with other work.",
    )
    common.add_docs_options(parser)
    args = parser.parse_args(argv)
    THREADS["server"] = args.threads
    requests = args.requests or (60 if args.quick else 600)
    info = common.machine()
    info["load average (1 min) at start"] = info.pop("load average (1 min, at start)")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    home = workdir / "registry"
    trained = build_registry(home, TASKS, args.train_samples, 1, 64)
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    registry = open_registry(resolve(home=home))
    names = [name for name, _ in TASKS]
    items = sample_items(registry, names, 64)
    registry.close()
    bodies: dict[str, list[bytes]] = {}
    for task, text in items:
        bodies.setdefault(task, []).append(body_of(task, text))
    bundle = workdir / "bundle"
    bundle4 = workdir / "bundle-4"
    for path, tasks in ((bundle, "all"), (bundle4, ",".join(names[:4]))):
        if not path.exists():
            common.run_command(
                [*common.registry_command(), "--home", str(home), "export", "--tasks", tasks, "--output", str(path)],
                env=common.offline_env(),
            )

    print("1. batching", file=sys.stderr)
    batch_rows = batching(bundle, bodies, requests, args.seconds)
    print("2. one server or five", file=sys.stderr)
    share_rows, share_tp, share_mem = sharing(bundle, bodies, requests, args.seconds)
    print("3. memory", file=sys.stderr)
    memory_rows = memory(bundle, bodies)
    print("4. hot-add", file=sys.stderr)
    added = hot_add(bundle4, workdir / "hot-add", bodies, TASKS[4], args.seconds * 4)
    info["load average (1 min) at end"] = common.load_average()

    at32 = {row[1]: float(row[7].rstrip("x")) for row in batch_rows if row[0] == 32}
    wide = float(memory_rows[2][3].rstrip("x"))
    threads = f"{args.threads} torch thread(s) each" if args.threads else "torch's own threads"
    body = (
        f"MiniLM (all-MiniLM-L6-v2) and 5 GLUE tasks ({', '.join(names)}), trained with `registry add-task` on "
        f"{args.train_samples} rows, 1 epoch, max length 64 (the scores do not matter for serving"
        f"{'; trained in this run: ' + ', '.join(f'{k} {v:.0f} s' for k, v in trained.items()) if trained else ''}). "
        f"Load: the first 64 dev-set inputs of each task, one input per request, client i on task i mod 5; "
        f"at most {requests} requests or {args.seconds:g} s per measured load. Servers on CPU with "
        f"{threads}, "
        "default limits unless named. Client: bench/serve.py's asyncio HTTP/1.1 client (keep-alive, one connection "
        "per client); "
        f"figures are what the clients measured.\n\n"
        f"### 1. Dynamic batching against batch size 1 (same server, same 5 tasks)\n\n"
        + common.markdown_table(
            ["clients", "server", "requests", "failed", "requests/s", "p50 ms", "p99 ms", "vs batch 1"], batch_rows
        )
        + f"\n\nAt 32 clients: {at32['dynamic']:.2f}x the throughput of batch size 1; goal ≥ 2x on CPU: "
        f"{'met' if at32['dynamic'] >= 2 else 'missed'}.\n\n"
        f"### 2. One 5-task server against 5 single-task servers (32 clients, the same inputs)\n\n"
        + common.markdown_table(["side", "requests/s", "p50 ms", "failed", "total RSS MB"], share_rows)
        + f"\n\nThroughput {share_tp:.2f}x at {share_mem:.2f}x the memory; goal ≥ 1.0x at ≤ 0.3x: "
        f"{'met' if share_tp >= 1 and share_mem <= 0.3 else 'missed'}.\n\n"
        f"### 3. Resident memory by tasks held\n\n"
        + common.markdown_table(["server", "tasks", "RSS MB (after answering each task)", "vs 1 task"], memory_rows)
        + f"\n\n20 tasks: {wide:.3f}x 1 task; goal ≤ 1.15x: {'met' if wide <= 1.15 else 'missed'}. "
        "(The 20 are the 5 trained adapters, each under 4 names in one bundle: memory does not depend on what the "
        "weights are.)\n\n"
        f"### 4. Hot-add under load\n\n"
        "A registry holding 4 tasks (imported from a bundle) served with the default 2 s poll, 8 clients looping on "
        "those tasks; "
        f"`registry add-task {TASKS[4][0]}` (64 rows, 1 epoch) in another process; a probe asks for the new task "
        "every 50 ms. "
        f"First answer {added['answered_after']:.2f} s after the task's `ready_at` (the server logged the new task set "
        f"{added['logged_after']:.2f} s after it; add-task's process exited {added['exited_after']:.2f} s after it); "
        "goal ≤ 5 s: "
        f"{'met' if added['answered_after'] <= 5 else 'missed'}. Meanwhile the clients sent "
        f"{added['load']['requests']} requests, "
        f"{added['load']['failed']} failed ({added['load']['throughput']:.1f} requests/s, p50 "
        f"{added['load']['p50'] * 1e3:.0f} ms, "
        f"p99 {added['load']['p99'] * 1e3:.0f} ms, with the training in another process on the same cores).\n"
    )
    common.publish(HEADING, body, info=info, write=common.write_docs(args))


if __name__ == "__main__":
    main()
