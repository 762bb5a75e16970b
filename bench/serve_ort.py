"""`registry serve` against ONNX Runtime's offline batched throughput of the plain base, side by side in one run.

    python -m bench.serve_ort --workdir DIR    # MiniLM + 5 GLUE tasks (trained once into DIR, as bench.serve does)
    python -m bench.serve_ort --quick          # short loads: checks that it runs (docs untouched)

The inputs: the dev sets of the five served tasks in arrival order (task i mod 5, row i div 5), varied lengths.
1. Offline plain ONNX Runtime: all-MiniLM-L6-v2 alone (no adapters, no heads, no HTTP), exported with the same
   exporter and run with the same session options and threads as the server; batches of 32 in arrival order,
   tokenising included (each task's max_length). Run before and after the servers; their mean is the anchor.
2. `registry serve --backend onnx` and `--backend eager` (each its own process, torch's threads) under `wrk`
   (Debian's HTTP benchmarking client; a Lua script sends the same inputs, one per request, in arrival order) at
   32 connections; padding from /metrics (token slots that were padding in the forward passes during the load);
   then one connection sending one short input, for the latency of a lone request.
3. Where the time goes: /metrics' stage seconds (registry_serve_request_stage_seconds,
   registry_serve_model_stage_seconds) read before and after each measured load; a request's time by stage, and the
   model thread's.
4. What else was tried (bench.serve_variants): torch.compile, int8 dynamic quantisation of the base; throughput side
   by side in this process and every task's dev-set score.
5. Cold start: from starting `registry serve --backend onnx` to /readyz answering 200, 1 task and 20 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, serve_variants
from bench.bundle import TASKS, base_path, build_registry, sample_items
from bench.serve import body_of, request, serving, widened
from registry.serving.predictor import MODEL_STAGES
from registry.serving.server import REQUEST_STAGES

HEADING = "Serving against ONNX Runtime: throughput, padding, latency, cold start"
WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, bodies[(i - 1) % #bodies + 1])
end
"""


def arrival(items: list[tuple[str, object]], names: list[str]) -> list[tuple[str, object]]:
    """Items of each task interleaved: task i mod len(names), row i div len(names)."""
    def plain(value):  # pyarrow scalars as Python strings
        return tuple(v.as_py() for v in value) if isinstance(value, tuple) else value.as_py()

    by_task = {name: [plain(text) for task, text in items if task == name] for name in names}
    return [(name, by_task[name][row]) for row in range(min(map(len, by_task.values()))) for name in names]


def plain_ort(items: list[tuple[str, object]], max_length: int, batch: int = 32):
    """A callable running the plain base in ONNX Runtime over `items` in batches of `batch` (tokenising included),
    returning the padding fraction; the session is built once, here."""
    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoModel, AutoTokenizer

    from registry.data.encoding import tokenise
    from registry.serving.onnx_backend import OPSET, session_options

    class Cls(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state[:, 0]

    model = AutoModel.from_pretrained(base_path()).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_path())
    path = Path(tempfile.mkdtemp()) / "plain.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    with torch.no_grad():
        torch.onnx.export(Cls(model), example, str(path), input_names=names, output_names=["cls"], opset_version=OPSET,
                          dynamic_axes={**{n: {0: "b", 1: "l"} for n in names}, "cls": {0: "b"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])

    def run() -> float:
        real = slots = 0
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            rows: list = [None] * len(chunk)
            for pair in (False, True):
                mine = [k for k, (_, text) in enumerate(chunk) if isinstance(text, tuple) == pair]
                if mine:
                    texts = [chunk[k][1] for k in mine]
                    ids, types = tokenise(tokenizer, [t[0] if pair else t for t in texts],
                                          [t[1] for t in texts] if pair else None, max_length=max_length)
                    for k, row, kind in zip(mine, ids, types or [None] * len(ids)):
                        rows[k] = (row, kind or [0] * len(row))
            width = max(len(row) for row, _ in rows)
            feeds = {name: np.zeros((len(rows), width), dtype=np.int64) for name in names}
            for r, (row, kind) in enumerate(rows):
                feeds["input_ids"][r, :len(row)] = row
                feeds["attention_mask"][r, :len(row)] = 1
                feeds["token_type_ids"][r, :len(row)] = kind
            session.run(None, feeds)
            real += int(feeds["attention_mask"].sum())
            slots += feeds["attention_mask"].size
        return 1 - real / slots

    return run


def wrk(url: str, bodies: Path, connections: int, seconds: float) -> dict:
    """`wrk` with one thread and `connections` keep-alive connections sending the bodies in turn."""
    script = bodies.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60,
                         env={"BODIES": str(bodies), "PATH": "/usr/bin:/bin"}, check=True).stdout

    print(out, file=sys.stderr)

    def ms(percent: str) -> float:
        value, unit = re.search(rf"^\s*{percent}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    mean, unit = re.search(r"^\s*Latency\s+([\d.]+)(us|ms|s|m)\s", out, re.MULTILINE).groups()
    return {"throughput": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)), "p50": ms("50"), "p99": ms("99"),
            "mean": float(mean) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit],
            "failed": int(errors.group(1)) if errors else 0}


STAGE = re.compile(r'^registry_serve_(request|model)_stage_seconds_(sum|count)\{(?:backend="[^"]*",)?stage="(\w+)"\} '
                   r"(\S+)$", re.MULTILINE)


def metrics(server) -> dict[str, float]:
    """The counters of /metrics this benchmark reads: tokens, slots, passes, and the stage summaries
    ("request sum queue", "model count forward", ...)."""
    text = asyncio.run(request(server.host, server.port, "GET", "/metrics"))[1].decode()
    found = {name: float(re.search(rf"^registry_serve_{name}_total (\S+)$", text, re.MULTILINE).group(1))
             for name in ("tokens", "token_slots", "forward_passes")}
    found["queued"] = float(re.search(r"^registry_serve_queue_inputs (\S+)$", text, re.MULTILINE).group(1))
    return found | {f"{kind} {part} {stage}": float(value) for kind, part, stage, value in STAGE.findall(text)}


def settled(server) -> tuple[float, dict[str, float]]:
    """When the server has answered every request it holds (wrk leaves some in flight when it stops), and /metrics
    then: nothing queued, and no request answered over 0.5 s."""
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        now = metrics(server)
        if last is not None and now["queued"] == 0 and now["request count queue"] == last["request count queue"]:
            return time.monotonic(), now
        last = now
        time.sleep(0.5)
    raise RuntimeError("the server did not settle within 120 s")


def breakdown(before: tuple[float, dict], after: tuple[float, dict], load: dict) -> dict:
    """Where one load's time went (from settled to settled): ms per answered request by request stage (and what the
    client saw beyond them), the model thread's seconds by stage as shares of its busy time, and its busy share of
    the wall time."""
    delta = {key: after[1][key] - before[1].get(key, 0.0) for key in after[1] if " " in key}
    answered = max(1.0, delta["request count queue"])
    request = {stage: 1e3 * delta[f"request sum {stage}"] / answered for stage in REQUEST_STAGES}
    busy = sum(delta[f"model sum {stage}"] for stage in MODEL_STAGES)
    return {"request_ms": request, "outside_ms": load["mean"] - sum(request.values()),
            "model_share": {stage: delta[f"model sum {stage}"] / busy for stage in MODEL_STAGES},
            "model_ms_per_input": 1e3 * busy / answered, "busy": busy / (after[0] - before[0])}


def served(home: Path, bundle: Path, backend: str, bodies: Path, short: Path, seconds: float) -> dict:
    """One server under wrk: 32 connections (padding from /metrics around it), then 1 connection, one short input."""
    with serving(home, "--bundle", str(bundle), "--backend", backend) as server:
        url = f"http://{server.host}:{server.port}"
        wrk(url, bodies, 32, 3)  # warm-up
        start = settled(server)
        loaded = wrk(url, bodies, 32, seconds)
        end = settled(server)
        lone = wrk(url, short, 1, max(5.0, seconds / 3))
        alone = settled(server)
        rss = server.rss()
    before, after = start[1], end[1]
    slots = after["token_slots"] - before["token_slots"]
    return {**loaded, "padding": 1 - (after["tokens"] - before["tokens"]) / slots, "lone": lone,
            "inputs_per_pass": (after["request count queue"] - before["request count queue"])
            / max(1.0, after["forward_passes"] - before["forward_passes"]),
            "rss": rss, "stages": breakdown(start, end, loaded), "lone_stages": breakdown(end, alone, lone)}


def cold_start(home: Path, bundles: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    """Seconds from starting `registry serve --backend onnx` to /readyz 200, per bundle, rounds interleaved."""
    seconds: dict[str, list[float]] = {label: [] for label in bundles}
    for round_ in range(rounds):
        for label in (list(bundles) if round_ % 2 == 0 else list(bundles)[::-1]):
            started = time.perf_counter()
            with serving(home, "--bundle", str(bundles[label]), "--backend", "onnx"):
                seconds[label].append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_ort", description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=200, help="Training rows per task.")
    parser.add_argument("--per-task", type=int, help="Dev rows per task (default 200, --quick 40).")
    parser.add_argument("--seconds", type=float, help="Seconds of each 32-client load (default 30, --quick 5).")
    parser.add_argument("--workdir", type=Path, help="Keep the registry and bundles here and reuse them.")
    common.add_docs_options(parser)
    args = parser.parse_args(argv)
    per_task = args.per_task or (40 if args.quick else 200)
    seconds = args.seconds or (5 if args.quick else 30)
    info = common.machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-ort-"))
    home = workdir / "registry"
    build_registry(home, TASKS, args.train_samples, 1, 64)
    from registry.storage.config import resolve
    from registry.storage.core import open_registry

    names = [name for name, _ in TASKS]
    registry = open_registry(resolve(home=home))
    items = arrival(sample_items(registry, names, per_task), names)
    registry.close()
    bundle = workdir / "bundle"
    if not bundle.exists():
        common.run_command([*common.registry_command(), "--home", str(home), "export", "--tasks", "all", "--output",
                            str(bundle)], env=common.offline_env())
    one = workdir / "bundle-1"
    if not one.exists():
        common.run_command([*common.registry_command(), "--home", str(home), "export", "--tasks", names[1],
                            "--output", str(one)], env=common.offline_env())
    bodies, short = workdir / "bodies.jsonl", workdir / "short.jsonl"
    bodies.write_bytes(b"".join(body_of(task, text) + b"\n" for task, text in items))
    short.write_bytes(body_of("sst2", "a gripping film") + b"\n")

    print("1. offline ONNX Runtime, plain base", file=sys.stderr)
    offline = plain_ort(items, 64)
    padding_offline = offline()  # warm-up
    anchor = [len(items) / timed(offline)]
    print(f"offline: {anchor[0]:.1f} examples/s, padding {padding_offline:.1%}", file=sys.stderr)
    print("2. servers under wrk", file=sys.stderr)
    sides = {backend: served(workdir, bundle, backend, bodies, short, seconds) for backend in ("onnx", "eager")}
    anchor.append(len(items) / timed(offline))
    print("3. what else was tried", file=sys.stderr)
    tried = serve_variants.tried(bundle, home, items, names, score=not args.quick)
    print("4. cold start", file=sys.stderr)
    starts = cold_start(workdir, {"1 task": one, "20 tasks": widened(bundle, workdir / "bundle-20", 4)},
                        1 if args.quick else 2)
    info["load average (1 min) at end"] = common.load_average()
    publish(args, info, items, anchor, padding_offline, sides, starts, seconds, tried)


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def where_the_time_goes(sides: dict) -> str:
    """Two tables: a request's mean time by stage (ms, and its share), and the model thread's time by stage."""
    loads = [(backend, key, label) for key, label in (("stages", "32 conn."), ("lone_stages", "1 conn."))
             for backend in sides]
    header = ["stage", *(f"{backend}, {label}" for backend, _, label in loads)]
    rows = []
    for stage in REQUEST_STAGES:
        cells = []
        for backend, key, _ in loads:
            ms = sides[backend][key]["request_ms"]
            cells.append(f"{ms[stage]:.1f} ms ({ms[stage] / sum(ms.values()):.0%})")
        rows.append([stage, *cells])
    rows.append(["all stages (server)", *(f"{sum(sides[b][k]['request_ms'].values()):.1f} ms" for b, k, _ in loads)])
    rows.append(["beyond them (uvicorn, sockets, wrk): wrk's mean − the stages",
                 *(f"{sides[b][k]['outside_ms']:.1f} ms" for b, k, _ in loads)])
    requests = common.markdown_table(header, rows)
    rows = [[stage, *(f"{sides[b][k]['model_share'][stage]:.0%}" for b, k, _ in loads)] for stage in MODEL_STAGES]
    rows.append(["model thread busy (share of the wall time, load start to every answer sent)",
                 *(f"{sides[b][k]['busy']:.0%}" for b, k, _ in loads)])
    rows.append(["model thread ms per input", *(f"{sides[b][k]['model_ms_per_input']:.1f}" for b, k, _ in loads)])
    return (f"A request's time by stage (mean ms per answered request, and its share of the stages' sum):\n\n"
            f"{requests}\n\nThe model thread's time by stage (share of its busy time):\n\n"
            f"{common.markdown_table(header, rows)}\n")


def tried_text(tried: list[dict]) -> str:
    names = [name for name, _ in TASKS]
    return ("What else was tried (bench.serve_variants, in the benchmark's process, one torch thread pool): inputs/s "
            f"over the same {WINDOW_NOTE}; outputs against eager float's on those inputs; every task's whole GLUE dev "
            "set in points (cola MCC, sst2 accuracy, mrpc F1, stsb Spearman, rte accuracy, x 100) for float and "
            "the int8 variants:\n\n" + common.markdown_table(*serve_variants.table(tried, names)) + "\n")


WINDOW_NOTE = (f"first {serve_variants.WINDOWS} windows of 32 of the server's inputs, as the server runs a window "
               "(after one warm-up window)")


def publish(args, info, items, anchor, padding_offline, sides, starts, seconds, tried) -> None:
    plain = statistics.mean(anchor)
    rows = [["ONNX Runtime offline, plain base (before, after)", f"{anchor[0]:.0f}, {anchor[1]:.0f}", "1.00x",
             f"{padding_offline:.0%}", "", "", "", ""]]
    for backend, m in sides.items():
        rows.append([f"`registry serve --backend {backend}`, wrk 32 connections", f"{m['throughput']:.0f}",
                     f"{m['throughput'] / plain:.2f}x", f"{m['padding']:.1%}", f"{m['p50']:.0f}", f"{m['p99']:.0f}",
                     f"{m['failed']} of {m['requests']}", f"{m['lone']['p50']:.1f}"])
    cold = {label: statistics.median(values) for label, values in starts.items()}
    fast = sides["onnx"]
    body = (
        f"MiniLM (all-MiniLM-L6-v2) and 5 GLUE tasks ({', '.join(name for name, _ in TASKS)}; adapters trained on "
        f"{args.train_samples} rows, 1 epoch, max length 64). Inputs: {len(items)} dev-set rows, the five tasks "
        "interleaved in arrival order (one input per request, mixed tasks, varied lengths). Everything on the CPU "
        f"with torch's threads; ONNX Runtime {__import__('onnxruntime').__version__} with the same intra-op threads. "
        f"Load: `wrk -t1` ({seconds:g} s per measured load), a Lua script cycling through the inputs. Requests/s for "
        "the servers, examples/s offline. No GPU was lent to this run.\n\n"
        + common.markdown_table(["side", "inputs/s", "vs plain ORT", "padding", "p50 ms", "p99 ms", "failed",
                                 "1 client p50 ms (short input)"], rows)
        + f"\n\nServed with ONNX Runtime: {fast['throughput'] / plain:.2f}x plain ONNX Runtime's offline throughput "
        f"(goal ≥ 1.0x: {'met' if fast['throughput'] >= plain else 'missed'}); padding {fast['padding']:.1%} of the "
        f"token slots at 32 connections (goal ≤ 15%: {'met' if fast['padding'] <= 0.15 else 'missed'}; "
        f"{fast['inputs_per_pass']:.1f} inputs per forward pass); one client, one short input: p50 "
        f"{fast['lone']['p50']:.1f} ms (goal ≤ 75 ms: {'met' if fast['lone']['p50'] <= 75 else 'missed'}); RSS "
        f"{fast['rss'] / 1e6:.0f} MB (eager: {sides['eager']['rss'] / 1e6:.0f} MB).\n\n"
        f"Cold start (`registry serve --backend onnx --bundle`, process start to /readyz 200, median of "
        f"{len(starts['1 task'])}): 1 task {cold['1 task']:.1f} s, 20 tasks {cold['20 tasks']:.1f} s = "
        f"{cold['20 tasks'] / cold['1 task']:.2f}x (goal ≤ 1.5x: "
        f"{'met' if cold['20 tasks'] <= 1.5 * cold['1 task'] else 'missed'}).\n\n"
        "Where the time goes (/metrics' stage summaries, read before and after each measured load; stages: read the "
        "body, parse (FastAPI's JSON decoding and validation, our checks), queue (waiting for a window and for the "
        "model thread), model (the windows that ran the request), serialise (the JSON answer), send (the rest until "
        "uvicorn has the answer); on the model thread: tokenise, batch (sort, cut, pad), forward and padding (each "
        "pass's time split by its real and padding token slots), output (heads, softmax, answers)):\n\n"
        + where_the_time_goes(sides) + "\n" + tried_text(tried)
    )
    common.publish(HEADING, body, info=info, write=common.write_docs(args))


if __name__ == "__main__":
    main()
