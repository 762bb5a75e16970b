"""`registry serve`: the real server in a subprocess on a free loopback port, talked to over real HTTP.

Tiny BERT tasks trained for real (sentiment: one text; pairs: a text pair; similarity: regression),
on SQLite and PostgreSQL registries and from a bundle; one test on the MiniLM base. Every server is
stopped when its test ends, pass or fail; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from registry.cli.main import cli
from registry.storage.config import Settings
from tests.bad_bundles import rehash
from tests.helpers import make_settings, stop, write_task_data

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # name: add-task options
    "sentiment": ("--adapter-size", "8", "--max-length", "12"),
    "pairs": ("--adapter-size", "8", "--max-length", "24"),
    "similarity": ("--adapter-size", "8", "--max-length", "20"),
}
MIXED = [  # the mixed form: every input names its task; the last runs past its task's max_length
    {"task": "sentiment", "text": "good great film"},
    {"task": "pairs", "text": "good film", "text_pair": "great movie"},
    {"task": "similarity", "text": "love", "text_pair": "love"},
    {"task": "sentiment", "text": "awful bad movie"},
    {"task": "pairs", "text": "the film was not good " * 5, "text_pair": "it was awful"},
    {"task": "sentiment", "text": "i love this very good film " * 6},
]
START_SECONDS = 120
REGISTRY = [str(Path(sys.executable).with_name("registry"))]  # the installed console script, in its own process


def env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, "REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
            "REGISTRY_STORE": settings.store_url}


def registry_cli(settings: Settings, *args) -> subprocess.CompletedProcess:
    """The `registry` command run in this process (the servers under test run in their own): its exit code and
    output as a process's."""
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
           "REGISTRY_STORE": settings.store_url}
    result = CliRunner().invoke(cli, list(map(str, args)), env=env)
    return subprocess.CompletedProcess(["registry", *map(str, args)], result.exit_code, result.stdout, result.stderr)


def add_task(settings: Settings, data: Path, name: str, *, as_name: str | None = None) -> None:
    result = registry_cli(settings, "add-task", as_name or name, "--data", data / name, "--epochs", "1", "--lr", "0.01",
                          "-q", *TASKS[name])
    assert result.returncode == 0, result.stderr


class Server:
    """A `registry serve` process; `url` once it listens, `lines` its stderr."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, f"the server exited: {''.join(self.stderr)}"
                continue
            found = re.search(r"on (http://\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError(f"the server did not start in {START_SECONDS} s: {''.join(self.stderr)}")

    def post(self, body, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/predict", json=body, timeout=60, **kwargs)


@contextmanager
def serving(settings: Settings, *args):
    """Start `registry serve --port 0 ARGS` on loopback; always stopped (SIGTERM, then SIGKILL) at the end."""
    process = subprocess.Popen(
        [*REGISTRY, "serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)],
        env=env_of(settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server = Server(process)
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        yield server
    finally:
        stop(process)


def predicted(settings: Settings, rows: list[dict], *extra) -> list[dict]:
    """What `registry predict --input` answers for rows (in the API's result shape)."""
    path = settings.home / f"rows-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = registry_cli(settings, "predict", "--input", path, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return [{key: row[key] for key in ("task", "label", "score", "probabilities")} for row in json.loads(result.stdout)]


def assert_same(got: list[dict], want: list[dict], tolerance: float = 1e-5) -> None:
    """Same tasks and labels; probabilities (or regression values) within `tolerance` (batches differ)."""
    assert [(g["task"], isinstance(g["label"], str) and g["label"]) for g in got] == \
        [(w["task"], isinstance(w["label"], str) and w["label"]) for w in want]
    for g, w in zip(got, want):
        if w["probabilities"] is None:
            assert g["label"] == pytest.approx(w["label"], abs=tolerance)
        else:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=tolerance)


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    return write_task_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trained(request, tmp_path_factory, tiny_base, task_data, pg_skip_reason) -> Settings:
    """A registry (SQLite or PostgreSQL) with the three tiny tasks."""
    if request.param == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path_factory.mktemp(f"serve-{request.param}"), request.param)
    assert registry_cli(settings, "init", "--base", tiny_base).returncode == 0
    for name in TASKS:
        add_task(settings, task_data, name)
    yield settings
    cleanup()


@pytest.fixture(scope="module")
def server(trained):
    with serving(trained) as running:
        yield running


def test_every_endpoint(server, trained):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "tasks": 3, "unavailable": []}
    shown = [json.loads(registry_cli(trained, "show", name, "--json").stdout) for name in TASKS]
    fields = ("name", "position", "task_type", "labels", "metric", "score", "adapter_sha256")
    assert httpx.get(f"{server.url}/v1/tasks").json() == [{key: row[key] for key in fields} for row in shown]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/tasks", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])

    single = server.post({"task": "sentiment", "inputs": ["good great film", "awful bad movie"]})
    assert single.status_code == 200
    results = single.json()["results"]
    assert [r["task"] for r in results] == ["sentiment", "sentiment"]
    assert all(
        r["label"] in ("negative", "positive") and set(r["probabilities"]) == {"negative", "positive"} for r in results
    )
    assert all(r["score"] == max(r["probabilities"].values()) for r in results)
    pairs = server.post({"task": "pairs", "inputs": [{"text": "good film", "text_pair": "great movie"}]}).json()[
        "results"
    ]
    assert pairs[0]["task"] == "pairs" and pairs[0]["label"] in ("0", "1")
    value = server.post({"task": "similarity", "inputs": [{"text": "love", "text_pair": "love"}]}).json()["results"][0]
    assert isinstance(value["label"], float) and value["probabilities"] is None
    assert server.post({"task": "nope", "inputs": ["x"]}).status_code == 404

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'registry_serve_requests_total{task="sentiment"}' in metrics
    assert 'registry_serve_errors_total{status="404",task=""}' in metrics
    for name in (
        "registry_serve_request_seconds_bucket",
        "registry_serve_batch_inputs_bucket",
        "registry_serve_queue_inputs",
        "registry_serve_tasks_loaded 3.0",
        "registry_serve_forward_passes_total",
        "registry_serve_padding_fraction",
    ):
        assert name in metrics


def test_mixed_requests_equal_registry_predict(server, trained):
    response = server.post({"inputs": MIXED})
    assert response.status_code == 200
    assert_same(response.json()["results"], predicted(trained, MIXED))
    # The same inputs as one task per request, and as single strings with a top-level task, answer the same.
    alone = [server.post({"task": row["task"], "inputs": [row["text"] if "text_pair" not in row else
                                                          {"text": row["text"], "text_pair": row["text_pair"]}]})
             .json()["results"][0] for row in MIXED]
    assert_same(alone, response.json()["results"])


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_each_backend_answers_as_registry_predict_and_counts_its_padding(trained, backend):
    rows = MIXED + [{"task": "sentiment", "text": " ".join(["good film"] * k)} for k in range(1, 9)]
    with serving(trained, "--backend", backend) as server:
        assert f"with {backend} on http" in "".join(server.stderr)
        response = server.post({"inputs": rows})
        assert response.status_code == 200
        assert_same(response.json()["results"], predicted(trained, rows), tolerance=1e-4)
        tokens = metric(server, "registry_serve_tokens_total")
        slots = metric(server, "registry_serve_token_slots_total")
        assert metric(server, "registry_serve_forward_passes_total") >= 1 and 0 < tokens < slots
        assert metric(server, "registry_serve_padding_fraction") == pytest.approx(1 - tokens / slots)
        # One input per request runs unpadded: the padding's share falls.
        assert server.post({"task": "sentiment", "inputs": ["good film"]}).status_code == 200
        assert metric(server, "registry_serve_token_slots_total") - slots == \
            metric(server, "registry_serve_tokens_total") - tokens > 0


def test_64_concurrent_clients_get_their_own_answers(server, trained):
    words = "good great bad awful love hate film movie not very".split()
    rows = [
        {
            "task": "sentiment" if i % 2 else "pairs",
            "text": " ".join(words[(i + k) % 10] for k in range(1 + i % 7)),
            **({} if i % 2 else {"text_pair": " ".join(words[(3 * i + k) % 10] for k in range(1 + i % 5))}),
        }
        for i in range(64)
    ]
    expected = predicted(trained, rows)

    async def client(row: dict, http: httpx.AsyncClient) -> list[dict]:
        answers = []
        for _ in range(3):
            response = await http.post(f"{server.url}/v1/predict", json={"inputs": [row]})
            assert response.status_code == 200, response.text
            answers.append(response.json()["results"][0])
        return answers

    async def all_clients() -> list[list[dict]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(client(row, http) for row in rows))

    answers = asyncio.run(all_clients())
    for mine, want in zip(answers, expected):
        assert_same(mine, [want] * 3)


def metric(server: Server, name: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{server.url}/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_until(check, seconds: float, what: str) -> float:
    """Poll `check()` until true; the seconds it took (fails after `seconds`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"{what} not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def fresh(dialect, tmp_path, tiny_base, pg_skip_reason) -> Settings:
    """An initialised registry with no task yet (SQLite or PostgreSQL)."""
    if dialect == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    settings, cleanup = make_settings(tmp_path, dialect)
    assert registry_cli(settings, "init", "--base", tiny_base).returncode == 0
    yield settings
    cleanup()


def test_hot_add_serves_a_new_task_while_a_client_loops(fresh, task_data):
    add_task(fresh, task_data, "sentiment")
    probe = {
        "inputs": [{"task": "sentiment", "text": "good great film"}, {"task": "sentiment", "text": "awful bad movie"}]
    }
    new = {"task": "pairs", "inputs": [{"text": "good film", "text_pair": "great movie"}]}
    with serving(fresh) as server:  # the default poll: every 2 s
        before = server.post(probe).json()
        assert server.post(new).status_code == 404
        stop, statuses = threading.Event(), []

        def loop() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    statuses.append(
                        http.post(
                            f"{server.url}/v1/predict", json={"task": "sentiment", "inputs": ["not good"]}
                        ).status_code
                    )

        client = threading.Thread(target=loop)
        client.start()
        try:
            add_task(fresh, task_data, "pairs")  # another process publishes it
            waited = wait_until(lambda: server.post(new).status_code == 200, 10, "the new task answering")
        finally:
            stop.set()
            client.join(timeout=60)
        assert len(statuses) > 10 and set(statuses) == {200}, statuses
        assert server.post(probe).json() == before  # bit-identical: the served task did not move
        assert [task["name"] for task in httpx.get(f"{server.url}/v1/tasks").json()] == ["sentiment", "pairs"]
        assert metric(server, "registry_serve_task_set_changes_total") == 1
        assert metric(server, "registry_serve_tasks_loaded") == 2
        print(f"hot-add: answered {waited:.2f} s after add-task returned")


def test_a_running_server_follows_promotions_and_retirements(fresh, task_data):
    """A new current version is served without a restart, a rollback brings the old answers back bit for bit, a
    retired task goes; the other task's answers never change."""
    add_task(fresh, task_data, "sentiment")
    add_task(fresh, task_data, "pairs")
    texts = ["good great film", "awful bad movie", "not good"]
    pairs = [{"text": "good film", "text_pair": "great movie"}]

    def answers(server, task, inputs):
        response = server.post({"task": task, "inputs": inputs})
        assert response.status_code == 200, response.text
        return [r["probabilities"] for r in response.json()["results"]]

    with serving(fresh, "--poll-seconds", "0.2") as server:
        first, other = answers(server, "sentiment", texts), answers(server, "pairs", pairs)
        result = registry_cli(fresh, "add-task", "sentiment", "--new-version", "--promote", "--data",
                              task_data / "sentiment", "--epochs", "1", "--lr", "0.03", "--seed", "7", "-q",
                              *TASKS["sentiment"])
        assert result.returncode == 0, result.stderr
        wait_until(lambda: answers(server, "sentiment", texts) != first, 10, "version 2 answering")
        second = answers(server, "sentiment", texts)
        from_registry = registry_cli(fresh, "predict", "--task", "sentiment", "--json", *texts)
        for row, served in zip(json.loads(from_registry.stdout), second):
            assert row["probabilities"] == pytest.approx(served, abs=1e-5)
        assert registry_cli(fresh, "promote", "sentiment", "--version", "1").returncode == 0
        wait_until(lambda: answers(server, "sentiment", texts) == first, 10, "the rollback to version 1 answering")
        assert registry_cli(fresh, "retire", "pairs").returncode == 0
        wait_until(lambda: server.post({"task": "pairs", "inputs": pairs}).status_code == 404, 10,
                   "the retired task going")
        assert [task["name"] for task in httpx.get(f"{server.url}/v1/tasks").json()] == ["sentiment"]
        assert registry_cli(fresh, "restore", "pairs").returncode == 0
        wait_until(lambda: server.post({"task": "pairs", "inputs": pairs}).status_code == 200, 10, "the restored task")
        assert answers(server, "pairs", pairs) == other


def sqlite_only(settings: Settings) -> None:
    if not settings.db_url.startswith("sqlite"):
        pytest.skip("the HTTP layer does not touch the database: checked once, on SQLite")


BAD_BODIES = [  # (id, body, status, the field (422) or words in the detail)
    (
        "unknown-task",
        {"task": "nope", "inputs": ["x"]},
        404,
        "no task named 'nope' is served here; tasks: sentiment, pairs, similarity",
    ),
    (
        "unknown-task-mixed",
        {"inputs": [{"task": "sentiment", "text": "x"}, {"task": "nope", "text": "y"}]},
        404,
        "'nope'",
    ),
    ("no-inputs", {"task": "sentiment"}, 422, ["body", "inputs"]),
    ("empty-inputs", {"task": "sentiment", "inputs": []}, 422, ["body", "inputs"]),
    ("inputs-not-a-list", {"task": "sentiment", "inputs": "good"}, 422, ["body", "inputs"]),
    ("input-a-number", {"task": "sentiment", "inputs": [3]}, 422, ["body", "inputs", 0, "str"]),
    ("unknown-field", {"task": "sentiment", "inputs": ["x"], "top_k": 2}, 422, ["body", "top_k"]),
    ("no-task", {"inputs": ["good", {"text": "bad"}]}, 422, ["body", "inputs", 0, "task"]),
    ("pair-missing", {"task": "pairs", "inputs": ["good film"]}, 422, ["body", "inputs", 0, "text_pair"]),
    (
        "pair-unwanted",
        {"inputs": [{"task": "sentiment", "text": "a", "text_pair": "b"}]},
        422,
        ["body", "inputs", 0, "text_pair"],
    ),
    ("too-many-inputs", {"task": "sentiment", "inputs": ["good"] * 5}, 413, "5 inputs in one request, at most 4"),
    ("too-many-bytes", {"task": "sentiment", "inputs": ["good " * 500]}, 413, "over 2048 bytes"),
]


def test_every_bad_input_is_refused_and_the_server_goes_on(trained):
    sqlite_only(trained)
    with serving(trained, "--max-inputs", "4", "--max-body-bytes", "2048") as server:
        good = server.post({"task": "sentiment", "inputs": ["good"]}).json()
        for case, body, status, expected in BAD_BODIES:
            response = server.post(body)
            assert response.status_code == status, (case, response.text)
            detail = response.json()["detail"]
            if status == 422:
                assert expected in [error["loc"] for error in detail], (case, detail)
            else:
                assert expected in detail, (case, detail)
        broken = [
            ("not-json", b'{"task": "sentiment", "inputs": [', 422),
            ("lone-surrogate", b'{"task": "sentiment", "inputs": ["\\ud800"]}', 422),
        ]
        for case, content, status in broken:
            response = httpx.post(
                f"{server.url}/v1/predict", content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == status, (case, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "inputs", 0, "text"]
        chunked = httpx.post(
            f"{server.url}/v1/predict", content=iter([b'{"task": "sentiment", "inputs": ["', b"x" * 4096, b'"]}'])
        )
        assert chunked.status_code == 413  # no Content-Length: counted as it arrives
        assert server.post({"task": "sentiment", "inputs": ["good"]}).json() == good
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        exposed = httpx.get(f"{server.url}/metrics").text
        refused = re.findall(
            r'^registry_serve_errors_total\{status="(\d+)",task="[^"]*"\} (\S+)$', exposed, re.MULTILINE
        )
        counts = {status: sum(float(n) for s, n in refused if s == status) for status, _ in refused}
        assert counts == {"404": 2, "413": 3, "422": 10}


def test_a_full_queue_answers_503_with_retry_after(trained):
    sqlite_only(trained)
    with serving(trained, "--max-queue", "4", "--max-wait-ms", "3000", "--max-batch-size", "64") as server:
        first: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(server.post({"task": "sentiment", "inputs": ["a", "b", "c", "d"]}))
        )
        waiting.start()
        try:
            wait_until(lambda: metric(server, "registry_serve_queue_inputs") == 4, 10, "four inputs queued")
            full = server.post({"task": "sentiment", "inputs": ["e"]})
        finally:
            waiting.join(timeout=60)
        assert (
            full.status_code == 503
            and full.headers["retry-after"] == "1"
            and "the queue is full" in full.json()["detail"]
        )
        assert first[0].status_code == 200 and len(first[0].json()["results"]) == 4


def test_sigterm_answers_requests_in_flight_then_exits(trained):
    sqlite_only(trained)
    with serving(trained, "--max-wait-ms", "2000", "--max-batch-size", "64") as server:
        answered: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: answered.append(server.post({"task": "sentiment", "inputs": ["good", "bad"]}))
        )
        in_flight.start()
        try:
            wait_until(lambda: metric(server, "registry_serve_queue_inputs") == 2, 10, "the request queued")
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=30)
        finally:
            in_flight.join(timeout=60)
        assert answered[0].status_code == 200 and len(answered[0].json()["results"]) == 2
        assert "drained the queue; stopping" in "".join(server.stderr)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz")


def test_an_exception_inside_a_batch_fails_that_batch_only(trained, tmp_path):
    """A bundle whose tokenizer knows a word past the base's vocabulary: an input holding it breaks the forward pass."""
    sqlite_only(trained)
    bundle = tmp_path / "bundle"
    assert registry_cli(trained, "export", "--tasks", "sentiment", "--output", bundle).returncode == 0
    tokenizer_path = bundle / "base" / "tokenizer.json"
    tokenizer = json.loads(tokenizer_path.read_bytes())
    vocab_size = json.loads((bundle / "base" / "config.json").read_bytes())["vocab_size"]
    tokenizer["model"]["vocab"]["zzzbreak"] = vocab_size + 100
    tokenizer_path.write_bytes(json.dumps(tokenizer).encode())
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    sha = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    manifest["files"]["base/tokenizer.json"] = {"sha256": sha, "size": tokenizer_path.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with serving(trained, "--bundle", bundle) as server:
        short = server.post({"task": "sentiment", "inputs": ["good film"]})
        assert short.status_code == 200
        broken = server.post({"task": "sentiment", "inputs": ["good film", "good zzzbreak"]})
        assert broken.status_code == 500 and "the batch holding this request failed" in broken.json()["detail"]
        assert server.post({"task": "sentiment", "inputs": ["good film"]}).json() == short.json()
        assert metric(server, 'registry_serve_errors_total{status="500",task="sentiment"}') == 1
        assert "a batch of 2 inputs failed" in "".join(server.stderr)


def test_a_task_giving_nan_fails_its_requests_and_the_rest_of_its_window_is_answered(trained, tmp_path):
    """A bundle (served as it is: no probe) whose sentiment head is NaN; a sentiment request and a pairs request wait
    for the same window (it closes at 2 inputs), so the NaN task's outputs and the answers share one run."""
    sqlite_only(trained)
    bundle = tmp_path / "bundle"
    assert registry_cli(trained, "export", "--tasks", "sentiment,pairs", "--output", bundle).returncode == 0
    adapter = bundle / "adapters" / "sentiment.safetensors"
    tensors = safetensors.torch.load_file(adapter)
    tensors["head.weight"] = torch.full_like(tensors["head.weight"], float("nan"))
    safetensors.torch.save_file(tensors, adapter)
    rehash(bundle)
    pair = {"task": "pairs", "text": "good film", "text_pair": "great movie"}
    with serving(trained, "--bundle", bundle, "--max-batch-size", "2", "--max-wait-ms", "20000") as server:
        with ThreadPoolExecutor(2) as pool:
            nan, fine = pool.map(server.post, [{"task": "sentiment", "inputs": ["good film"]}, {"inputs": [pair]}])
        assert nan.status_code == 500
        assert nan.json()["detail"].startswith("task 'sentiment' gave NaN or infinite outputs for this request")
        assert fine.status_code == 200
        assert_same(fine.json()["results"], predicted(trained, [pair]), tolerance=1e-4)
        assert metric(server, "registry_serve_batch_inputs_count") == 1  # one window ran both
        assert metric(server, 'registry_serve_errors_total{status="500",task="sentiment"}') == 1
        assert server.post({"task": "pairs", "inputs": [pair]}).json() == fine.json()  # the server goes on


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_metrics_say_where_a_requests_time_goes_within_the_clients_wall_time(trained, backend):
    """Requests one after another: each stage's seconds are counted once a request (a window) and add up to at most
    what the client waited in all; the model thread's stages to at most the requests' model stage."""
    sqlite_only(trained)
    bodies = [{"task": "sentiment", "inputs": ["good film", "good great film", "not a good great film at all"]},
              {"inputs": MIXED[:3]}] * 3
    with serving(trained, "--backend", backend, "--max-wait-ms", "1") as server:
        with httpx.Client(timeout=60) as http:
            started = time.perf_counter()
            for body in bodies:
                assert http.post(f"{server.url}/v1/predict", json=body).status_code == 200
            wall = time.perf_counter() - started
        exposed = httpx.get(f"{server.url}/metrics").text
    request = stage_sums(exposed, "registry_serve_request_stage_seconds", r'stage="(\w+)"')
    model = stage_sums(exposed, "registry_serve_model_stage_seconds", rf'backend="{backend}",stage="(\w+)"')
    assert set(request) == {"read", "parse", "queue", "model", "serialise", "send"}
    assert set(model) == {"tokenise", "batch", "forward", "padding", "output"}
    assert all(count == len(bodies) for count, _ in request.values())
    assert all(count >= len(bodies) for count, _ in model.values())  # one window a request at least
    assert all(seconds > 0 for _, seconds in [*request.values(), *model.values()])
    assert sum(seconds for _, seconds in request.values()) <= wall
    assert sum(seconds for _, seconds in model.values()) <= request["model"][1]


def stage_sums(exposed: str, name: str, labels: str) -> dict[str, tuple[float, float]]:
    """(count, seconds) by stage of one of /metrics' stage summaries."""
    found = {}
    for kind in ("count", "sum"):
        for stage, value in re.findall(rf"^{name}_{kind}\{{{labels}\}} (\S+)$", exposed, re.MULTILINE):
            found.setdefault(stage, {})[kind] = float(value)
    return {stage: (values["count"], values["sum"]) for stage, values in found.items()}


@pytest.mark.real
def test_serving_the_minilm_base(tmp_path, minilm_path, task_data):
    settings, _ = make_settings(tmp_path, "sqlite")
    assert registry_cli(settings, "init", "--base", minilm_path).returncode == 0
    add_task(settings, task_data, "sentiment")
    add_task(settings, task_data, "pairs")
    rows = [row for row in MIXED if row["task"] != "similarity"]
    with serving(settings) as server:
        response = server.post({"inputs": rows})
        assert response.status_code == 200
        assert_same(response.json()["results"], predicted(settings, rows))
