"""`registry serve`: every task over HTTP, batched across requests and tasks; new tasks go live without a restart."""

from __future__ import annotations

from dataclasses import fields

import click

from registry.api import Bundle
from registry.cli.output import device_option, open_registry
from registry.storage.config import ServeLimits, Settings


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
@click.option("--backend", type=click.Choice(["auto", "onnx", "eager"]), default="auto", show_default=True,
              help="What runs the model: onnx (ONNX Runtime, CPU), eager (PyTorch), auto (onnx on a CPU when it can).")
@limit_options
@click.pass_obj
def serve(settings: Settings, bundle_path: str | None, task_names: str, host: str, port: int, token: str | None,
          device: str, backend: str, **limits) -> None:
    """Serve every task over HTTP: POST /v1/predict, GET /v1/tasks, /healthz, /readyz, /metrics, /docs.

    From the registry (the default) tasks published while it runs are served within --poll-seconds,
    without a restart. SIGTERM or Ctrl-C answers the requests in flight, then stops (within --grace-seconds;
    a second signal stops at once). Listening beyond loopback without --token prints a warning.

    Example: registry serve --port 8000
    """
    names = None if task_names.strip() == "all" else [name.strip() for name in task_names.split(",") if name.strip()]
    tasks = Bundle.open(bundle_path) if bundle_path is not None else open_registry(settings)
    tasks.serve(names, host=host, port=port, device=device, backend=backend, limits=ServeLimits(**limits), token=token)


COMMANDS = [serve]
