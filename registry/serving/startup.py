"""Starting a server process: its tasks (a bundle's or the registry's), the HTTP app, a listening socket, uvicorn."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import ServeError
from registry.storage.config import ServeLimits, Settings

if TYPE_CHECKING:  # loaded by start(): `registry ui` listens through this module without torch
    from registry.serving import live


@dataclass(frozen=True)
class Started:
    """A server ready to run: its tasks, its app, and the socket it listens on."""

    tasks: live.FixedTasks | live.RegistryTasks
    app: object
    listener: socket.socket
    url: str
    limits: ServeLimits
    warning: str | None  # set when the address is reachable from other machines and no token guards it

    def run(self) -> None:
        """Serve until SIGTERM or Ctrl-C, answering the requests in flight (within the grace) before stopping."""
        import uvicorn

        from registry.serving import limits as admission

        chosen = self.limits
        config = uvicorn.Config(self.app, log_level="warning", http=admission.header_deadline(chosen.read_seconds),
                                timeout_keep_alive=5, limit_concurrency=chosen.max_connections,
                                h11_max_incomplete_event_size=16 * 1024,
                                timeout_graceful_shutdown=chosen.grace_seconds)
        admission.limit_repeats("uvicorn", "uvicorn.error")
        admission.BoundedServer(config, chosen.grace_seconds).run(sockets=[self.listener])


def start(settings: Settings, *, bundle_path: str | None = None, names: Sequence[str] | None = None,
          host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: ServeLimits | None = None, token: str | None = None, backend: str = "eager") -> Started:
    """Load the tasks (from `bundle_path`, else the registry, followed while it runs) to run on `backend`
    (registry.serving.onnx_backend: auto, onnx or eager), build the app, listen.

    With `token` every route but /healthz requires `Authorization: Bearer token`.
    """
    from registry.serving import limits as admission, live, server
    from registry.storage.core import open_registry

    listener = bind(host, port)  # an address this machine cannot have is refused before any model loads
    try:
        if bundle_path is not None:
            tasks = live.FixedTasks(bundle_path, names, device=device, backend=backend)
        else:
            tasks = live.RegistryTasks(open_registry(settings), names, device=device, backend=backend)
        chosen = limits or ServeLimits()
        app = server.create_app(tasks, chosen, watch=bundle_path is None, token=token)
        if bundle_path is None:  # the read-only dashboard (`registry ui`) under /ui, on a connection of its own
            from registry.dashboard.app import create_app, open_read_only

            app.mount("/ui", create_app(open_read_only(settings)))
    except BaseException:
        listener.close()
        raise
    listener.listen(2048)
    shown = f"[{host}]" if listener.family == socket.AF_INET6 else host
    return Started(tasks, app, listener, f"http://{shown}:{listener.getsockname()[1]}", chosen,
                   admission.exposure_warning(host, token))


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a free port); ServeError when the address cannot be had."""
    listener = bind(host, port)
    listener.listen(2048)
    return listener


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: a free port), not yet listening; ServeError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): {bind_hint(exc)}") from None
    return listener


def bind_hint(error: OSError) -> str:
    """What to change when the listening socket cannot bind."""
    if error.errno == errno.EADDRINUSE:
        return "the port is taken: pick another --port (or 0 for a free one)"
    if error.errno == errno.EACCES:
        return "ports below 1024 need privileges: pick another --port"
    return "check --host (an address of this machine, e.g. 127.0.0.1)"
