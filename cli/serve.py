"""`registry serve`: every task over HTTP, batched across requests and tasks; new tasks go live without a restart."""

from __future__ import annotations

from dataclasses import fields

import click

from registry.cli.output import device_option
from registry.config import ServeLimits, Settings
from registry.core import open_registry

def limit_options(command):
    """One option per ServeLimits field, with its default and help; a float must be finite (no nan, no inf)."""
    for limit in reversed(fields(ServeLimits)):
        kind = click.FloatRange(min=limit.metadata["min"], max=1e6) if limit.type == "float" else click.IntRange(min=1)
        command = click.option(f"--{limit.name.replace('_', '-')}", limit.name, type=kind, default=limit.default,
                               show_default=True, callback=finite, help=limit.metadata["help"])(command)
    return command


def finite(ctx: click.Context, param: click.Parameter, value):
    """A limit's value, refused when it is nan (which passes every range check)."""
    if value != value:
        raise click.BadParameter("nan is not a number of anything: give a finite value", ctx=ctx, param=param)
    return value


@click.command()
@click.option(
    "--bundle", "bundle_path", type=click.Path(exists=True), help="Serve this bundle (no database), not the registry."
)
@click.option("--tasks", "task_names", default="all", show_default=True, help="Which ready tasks: all, or NAME,NAME…")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (printed on start).")
@click.option("--token", envvar="REGISTRY_SERVE_TOKEN", metavar="TOKEN",
              help="Require `Authorization: Bearer TOKEN` on every route but /healthz (env REGISTRY_SERVE_TOKEN).")
@device_option
@limit_options
@click.pass_obj
def serve(settings: Settings, bundle_path: str | None, task_names: str, host: str, port: int, token: str | None,
          device: str, **limits) -> None:
    """Serve every task over HTTP: POST /v1/predict, GET /v1/tasks, /healthz, /readyz, /metrics, /docs.

    From the registry (the default) tasks published while it runs are served within --poll-seconds,
    without a restart. SIGTERM or Ctrl-C answers the requests in flight, then stops (within --grace-seconds;
    a second signal stops at once). Listening beyond loopback without --token prints a warning.

    Example: registry serve --port 8000
    """
    import socket

    import uvicorn

    from registry import limits as admission, live, server

    names = None if task_names.strip() == "all" else [name.strip() for name in task_names.split(",") if name.strip()]
    if bundle_path is not None:
        tasks = live.FixedTasks(bundle_path, names, device=device)
    else:
        tasks = live.RegistryTasks(open_registry(settings), names, device=device)
    chosen = ServeLimits(**limits)
    app = server.create_app(tasks, chosen, watch=bundle_path is None, token=token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror or exc}): {bind_hint(exc)}") \
            from None
    listener.listen(2048)
    warning = admission.exposure_warning(host, token)
    if warning:
        click.echo(warning, err=True)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"serving {len(tasks.predictor.tasks)} task(s) on http://{shown}:{listener.getsockname()[1]} "
               f"({', '.join(tasks.predictor.tasks)})", err=True)
    config = uvicorn.Config(app, log_level="warning", http=admission.header_deadline(chosen.read_seconds),
                            timeout_keep_alive=5, limit_concurrency=chosen.max_connections,
                            h11_max_incomplete_event_size=16 * 1024, timeout_graceful_shutdown=chosen.grace_seconds)
    admission.limit_repeats("uvicorn", "uvicorn.error")
    admission.BoundedServer(config, chosen.grace_seconds).run(sockets=[listener])


def bind_hint(error: OSError) -> str:
    """What to change when the listening socket cannot bind."""
    import errno

    if error.errno == errno.EADDRINUSE:
        return "the port is taken: pick another --port (or 0 for a free one)"
    if error.errno == errno.EACCES:
        return "ports below 1024 need privileges: pick another --port"
    return "check --host (an address of this machine, e.g. 127.0.0.1)"


COMMANDS = [serve]
