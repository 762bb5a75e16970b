"""Starting a server process: its tasks (a bundle's or the registry's), the HTTP app, a listening socket, uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from registry.errors import ServeError
from registry.serving import live, server
from registry.storage.config import ServeLimits, Settings
from registry.storage.core import open_registry


@dataclass(frozen=True)
class Started:
    """A server ready to run: its tasks, its app, and the socket it listens on."""

    tasks: live.FixedTasks | live.RegistryTasks
    app: object
    listener: socket.socket
    url: str

    def run(self) -> None:
        """Serve until SIGTERM or Ctrl-C, answering the requests in flight before stopping."""
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=None)
        uvicorn.Server(config).run(sockets=[self.listener])


def start(settings: Settings, *, bundle_path: str | None = None, names: Sequence[str] | None = None,
          host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: ServeLimits | None = None) -> Started:
    """Load the tasks (from `bundle_path`, else the registry, followed while it runs), build the app, listen."""
    if bundle_path is not None:
        tasks = live.FixedTasks(bundle_path, names, device=device)
    else:
        tasks = live.RegistryTasks(open_registry(settings), names, device=device)
    app = server.create_app(tasks, limits or ServeLimits(), watch=bundle_path is None)
    if bundle_path is None:  # the read-only dashboard (`registry ui`) under /ui, on a connection of its own
        from registry.dashboard.app import create_app, open_read_only

        app.mount("/ui", create_app(open_read_only(settings)))
    listener = listen(host, port)
    shown = f"[{host}]" if listener.family == socket.AF_INET6 else host
    return Started(tasks, app, listener, f"http://{shown}:{listener.getsockname()[1]}")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a free port); ServeError when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port") from None
    listener.listen(2048)
    return listener
