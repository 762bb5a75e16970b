"""Servers the tests start themselves, each stopped when its fixture ends: moto's S3 server and a TCP relay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Return once `host:port` accepts connections; fail if `process` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on {host}:{port} exited with {process.returncode} before it listened")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


class MotoServer:
    """moto's standalone S3 server on `host` (a loopback or bridge address we made), in its own process group."""

    def __init__(self, host: str, log: Path):
        self.host, self.port = host, free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.log = open(log, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(host, self.port, self.process)
        except Exception:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """The variables a client (s3fs, the registry CLI) needs to reach this server."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def make_bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing", skip_instance_cache=True).mkdir(
            name
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


class Relay:
    """A TCP relay on `listen_host` to `target`, in threads of this process; the first `refuse` connections
    are closed at once (a flaky network). Stopped by `close()`."""

    def __init__(self, listen_host: str, target: tuple[str, int], refuse: int = 0):
        self.target, self.refuse, self.refused = target, refuse, 0
        self.server = socket.create_server((listen_host, 0))
        self.host, self.port = listen_host, self.server.getsockname()[1]
        self.closing = False
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refused < self.refuse:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: the client sees a reset
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closing = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.server.close()
        for end in self.sockets:
            try:
                end.close()
            except OSError:
                pass
        self.thread.join(timeout=5)
