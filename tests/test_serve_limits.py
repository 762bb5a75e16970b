"""`registry serve` under cheap attacks: huge bodies, long texts, slow clients, repeated logs, stop signals, strangers.

The real server in a subprocess on a free loopback port (tests/test_serve.py's helpers), one SQLite registry with
a single-text and a pair task. Every wait is bounded; no test measures speed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from registry.serving.limits import Repeats, exposure_warning, no_delay
from tests.helpers import make_settings
from tests.test_serve import REGISTRY, add_task, env_of, registry_cli, serving, task_data  # noqa: F401

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base, task_data):  # noqa: F811
    settings, cleanup = make_settings(tmp_path_factory.mktemp("limits"), "sqlite")
    assert registry_cli(settings, "init", "--base", tiny_base).returncode == 0
    for name in ("sentiment", "pairs"):
        add_task(settings, task_data, name)
    yield settings
    cleanup()


def test_a_body_of_half_a_million_integers_gets_a_short_413(served):
    body = b'{"task": "sentiment", "inputs": [' + b",".join([b"1"] * 524_000) + b"]}"
    assert len(body) < 1 << 20  # under --max-body-bytes: only the count of inputs can refuse it
    with serving(served) as server:
        probe = threading.Thread(target=lambda: httpx.get(f"{server.url}/healthz", timeout=30))
        probe.start()
        response = httpx.post(f"{server.url}/v1/predict", content=body,
                              headers={"content-type": "application/json"}, timeout=60)
        probe.join(timeout=60)
        assert response.status_code == 413, response.text[:300]
        assert len(response.content) < 300 and "524000 inputs in one request, at most 256" in response.text


def test_validation_errors_are_capped_and_short(served):
    with serving(served, "--max-inputs", "1000") as server:
        response = server.post({"task": "sentiment", "inputs": [[1] * 50] * 900})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert len(detail) == 6 and "more problems not shown" in detail[-1]["msg"]
        assert len(response.content) < 3000


def test_a_text_over_max_text_chars_gets_413_before_tokenising(served):
    with serving(served, "--max-text-chars", "200") as server:
        for body in ({"task": "sentiment", "inputs": ["x" * 201]},
                     {"inputs": [{"task": "pairs", "text": "a", "text_pair": "y" * 201}]}):
            response = server.post(body)
            assert response.status_code == 413 and "at most 200 (--max-text-chars)" in response.json()["detail"]
        assert server.post({"task": "sentiment", "inputs": ["x" * 200]}).status_code == 200


def test_text_past_what_max_length_reads_is_cut_and_answers_the_same(served):
    with serving(served, "--max-text-chars", "100000") as server:
        short = server.post({"task": "sentiment", "inputs": ["good film " * 20]}).json()
        long = server.post({"task": "sentiment", "inputs": ["good film " * 9000]}).json()
        assert long["results"][0]["probabilities"] == pytest.approx(short["results"][0]["probabilities"], abs=1e-5)


def start(settings, *args, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`registry serve --port 0 ARGS`, returning the process and its URL once it listens."""
    process = subprocess.Popen([*REGISTRY, "serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)],
                               env={**env_of(settings), **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if " on http://" in line:
            return process, line.split(" on ", 1)[1].split()[0]
        assert time.monotonic() < deadline, "the server did not start"
    raise AssertionError(f"the server exited: {process.wait()}")


def stopped(process: subprocess.Popen) -> str:
    """Stop `process` if it still runs; its remaining stderr."""
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=30)[1]


def test_the_bearer_token_guards_every_route_but_healthz(served):
    process, url = start(served, env={"REGISTRY_SERVE_TOKEN": TOKEN})
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        for path in ("/readyz", "/v1/tasks", "/metrics", "/openapi.json", "/docs"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                refused = httpx.get(f"{url}{path}", headers=headers, timeout=30)
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            assert httpx.get(f"{url}{path}", headers=good, timeout=30).status_code == 200, path
        body = {"task": "sentiment", "inputs": ["good"]}
        assert httpx.post(f"{url}/v1/predict", json=body, timeout=30).status_code == 401
        assert httpx.post(f"{url}/v1/predict", json=body, headers=good, timeout=30).status_code == 200
        schema = httpx.get(f"{url}/openapi.json", headers=good, timeout=30).json()
        assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    finally:
        stopped(process)


def test_a_warning_when_listening_beyond_loopback_without_a_token():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None and exposure_warning("0.0.0.0", TOKEN) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        assert "without a token" in exposure_warning(host, None)


def test_an_address_that_is_not_this_machines_is_named_as_the_problem(served):
    result = registry_cli(served, "serve", "--host", "999.1.1.1", "--port", "0")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "check --host" in result.stderr and "--port" not in result.stderr.split(":", 3)[-1]


def slow_client(address: tuple[str, int], closed: list[bool], seconds: float) -> None:
    """Sends a request's headers one byte at a time (slowloris); records whether the server closed on it."""
    with socket.create_connection(address, timeout=seconds + 10) as connection:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
        started = time.monotonic()
        try:
            for byte in request:
                connection.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > seconds:
                    break
            closed.append(connection.recv(1) == b"")
        except (ConnectionResetError, BrokenPipeError):
            closed.append(True)


def test_slow_clients_are_cut_off_and_the_server_keeps_answering(served):
    process, url = start(served, "--read-seconds", "1", "--max-connections", "64")
    try:
        parts = urlsplit(url)
        closed: list[bool] = []
        clients = [threading.Thread(target=slow_client, args=((parts.hostname, parts.port), closed, 6))
                   for _ in range(100)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
        assert closed.count(True) == 100  # every one closed by the server long before its headers were in
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        errors = stopped(process)
    assert len(errors.splitlines()) < 20, errors[:2000]


def queue_one(url: str) -> None:
    """One request that waits in the queue; the server may stop before answering it."""
    try:
        httpx.post(f"{url}/v1/predict", json={"task": "sentiment", "inputs": ["a"]}, timeout=60)
    except httpx.HTTPError:
        pass


def test_a_stuck_queue_still_stops_within_the_grace_period(served):
    process, url = start(served, "--max-wait-ms", "600000", "--max-batch-size", "64", "--grace-seconds", "2")
    try:
        threading.Thread(target=queue_one, args=(url,), daemon=True).start()
        time.sleep(1)  # the request is in the queue, its window 10 minutes away
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) != 0
    finally:
        errors = stopped(process)
    assert "did not drain in 2 s" in errors or "still not stopped 2 s after" in errors, errors


def test_a_second_sigterm_stops_at_once(served):
    process, url = start(served, "--max-wait-ms", "600000", "--max-batch-size", "64", "--grace-seconds", "600")
    try:
        threading.Thread(target=queue_one, args=(url,), daemon=True).start()
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert process.poll() is None  # the first waits for the queue (up to 600 s)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        errors = stopped(process)
    assert "a second stop signal: stopping now" in errors


def test_a_repeated_log_line_is_written_once_a_window_with_a_count():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    repeats = Repeats(seconds=0.5)
    handler.addFilter(repeats)
    logger = logging.getLogger("registry.test-repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(1000):
            try:
                raise ConnectionRefusedError("the database is down")
            except ConnectionRefusedError:
                logger.exception("could not refresh the served tasks; serving those loaded")
        logger.warning("another line")
        time.sleep(0.6)
        try:
            raise ConnectionRefusedError("the database is down")
        except ConnectionRefusedError:
            logger.exception("could not refresh the served tasks; serving those loaded")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert written.count("could not refresh") == 2 and written.count("Traceback") == 2
    assert "another line" in written and "(999 more like this in the last 0.5 s not shown)" in written


def test_connections_send_small_writes_at_once():
    """uvicorn's listening socket has proto 0, so asyncio leaves Nagle on for its connections: an answer written as
    headers then body waited for the client's delayed ACK. `no_delay` (called by the server's protocol) turns it off."""

    async def accepted_nodelay(fix: bool) -> int:
        seen = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                if fix:
                    no_delay(transport)
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn binds: proto 0
        listening.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        try:
            _, writer = await asyncio.open_connection(*listening.getsockname())
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay(False)) == 0
    assert asyncio.run(accepted_nodelay(True)) != 0
