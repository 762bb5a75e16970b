"""Starting a server process: its tasks (a bundle's or the registry's), the HTTP app, a listening socket, uvicorn.

`Registry.serve` and `Bundle.serve` (what `registry serve` calls) run `serve`; `Registry.app` and `Bundle.app` are
`app_of` the same tasks.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import ServeError
from registry.storage.config import ServeLimits

if TYPE_CHECKING:  # loaded by the server's callers: `registry ui` listens through this module without torch
    from fastapi import FastAPI

    from registry.serving import live

    Tasks = live.FixedTasks | live.RegistryTasks

log = logging.getLogger("registry")


@dataclass(frozen=True)
class Started:
    """A server ready to run: its tasks, its app, and the socket it listens on."""

    tasks: Tasks
    app: FastAPI
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


def serve(load: Callable[[], Tasks], *, backend: str, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits = ServeLimits(), token: str | None = None) -> None:
    """Serve the tasks `load` returns until SIGTERM or Ctrl-C (see `start`); the address and the tasks served are
    logged (INFO), with a warning when the address is reachable from other machines and no token guards it."""
    started = start(load, host=host, port=port, limits=limits, token=token)
    if started.warning:
        log.warning(started.warning)
    tasks = started.tasks
    served = tasks.predictor.tasks if tasks.predictor is not None else []
    backend_name = tasks.predictor.backend if tasks.predictor is not None else backend
    quarantined = f"; unavailable: {', '.join(tasks.unavailable)}" if tasks.unavailable else ""
    log.info(f"serving {len(served)} task(s) with {backend_name} on {started.url} ({', '.join(served)}{quarantined})")
    started.run()


def start(load: Callable[[], Tasks], *, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits = ServeLimits(), token: str | None = None) -> Started:
    """Bind `host`:`port`, then load the tasks (`load`: a bundle's, or a registry's followed while it runs), build
    their app (`app_of`), listen.

    With `token` every route but /healthz requires `Authorization: Bearer token`.
    """
    from registry.serving import limits as admission

    listener = bind(host, port)  # an address this machine cannot have is refused before any model loads
    try:
        tasks = load()
        app = app_of(tasks, limits, token=token)
    except BaseException:
        listener.close()
        raise
    listener.listen(2048)
    shown = f"[{host}]" if listener.family == socket.AF_INET6 else host
    return Started(tasks, app, listener, f"http://{shown}:{listener.getsockname()[1]}", limits,
                   admission.exposure_warning(host, token))


def app_of(tasks: Tasks, limits: ServeLimits = ServeLimits(), *, token: str | None = None) -> FastAPI:
    """The ASGI app serving `tasks` within `limits`: a registry's are followed (polled) and its read-only dashboard
    is mounted under /ui, on a connection of its own; a bundle's are served as they are."""
    from registry.serving import live, server

    following = isinstance(tasks, live.RegistryTasks)
    app = server.create_app(tasks, limits, watch=following, token=token)
    if following:
        from registry.dashboard.app import create_app, open_read_only

        app.mount("/ui", create_app(open_read_only(tasks.registry.settings)))
    return app


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
