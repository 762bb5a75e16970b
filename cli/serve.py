"""`registry serve`: every task over HTTP, batched across requests and tasks; new tasks go live without a restart."""

from __future__ import annotations

from dataclasses import fields

import click

from registry.cli.output import device_option
from registry.config import ServeLimits, Settings
from registry.core import open_registry

def limit_options(command):
    """One option per ServeLimits field, with its default and help."""
    for limit in reversed(fields(ServeLimits)):
        kind = click.FloatRange(min=limit.metadata["min"]) if limit.type == "float" else click.IntRange(min=1)
        command = click.option(f"--{limit.name.replace('_', '-')}", limit.name, type=kind, default=limit.default,
                               show_default=True, help=limit.metadata["help"])(command)
    return command


@click.command()
@click.option(
    "--bundle", "bundle_path", type=click.Path(exists=True), help="Serve this bundle (no database), not the registry."
)
@click.option("--tasks", "task_names", default="all", show_default=True, help="Which ready tasks: all, or NAME,NAME…")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (printed on start).")
@device_option
@limit_options
@click.pass_obj
def serve(settings: Settings, bundle_path: str | None, task_names: str, host: str, port: int, device: str,
          **limits) -> None:
    """Serve every task over HTTP: POST /v1/predict, GET /v1/tasks, /healthz, /readyz, /metrics, /docs.

    From the registry (the default) tasks published while it runs are served within --poll-seconds,
    without a restart. SIGTERM or Ctrl-C answers the requests in flight, then stops.

    Example: registry serve --port 8000
    """
    import socket

    import uvicorn

    from registry import live, server

    names = None if task_names.strip() == "all" else [name.strip() for name in task_names.split(",") if name.strip()]
    if bundle_path is not None:
        tasks = live.FixedTasks(bundle_path, names, device=device)
    else:
        tasks = live.RegistryTasks(open_registry(settings), names, device=device)
    app = server.create_app(tasks, ServeLimits(**limits), watch=bundle_path is None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port") from None
    listener.listen(2048)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    served = tasks.predictor.tasks if tasks.predictor is not None else []
    quarantined = f"; unavailable: {', '.join(tasks.unavailable)}" if tasks.unavailable else ""
    click.echo(f"serving {len(served)} task(s) on http://{shown}:{listener.getsockname()[1]} "
               f"({', '.join(served)}{quarantined})", err=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None)).run(sockets=[listener])


COMMANDS = [serve]
