"""`registry ui`: the read-only web dashboard (registry.dashboard). No torch: it only reads the catalog."""

from __future__ import annotations

import click

from registry.storage.config import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The pages have no login: keep the default (loopback) unless a proxy "
                   "in front of it does the authentication.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True,
              help="Port to listen on; 0 picks a free one (printed on start).")
@click.pass_obj
def ui(settings: Settings, host: str, port: int) -> None:
    """Browse the registry in a web browser: tasks, versions, runs, score charts, the task matrix, the base.

    Read-only: every page only reads, on database transactions that refuse writes. Ctrl-C stops.

    Example: registry ui --port 8080   (then open http://127.0.0.1:8080/)
    """
    import ipaddress
    import socket

    import uvicorn

    from registry.dashboard.app import create_app, open_read_only

    registry = open_read_only(settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        registry.close()
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port") from None
    listener.listen(128)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"dashboard on http://{shown}:{listener.getsockname()[1]}/ (read-only; Ctrl-C stops)", err=True)
    if not ipaddress.ip_address(listener.getsockname()[0]).is_loopback:
        click.echo(f"warning: the dashboard has no login: whoever reaches {shown} can read this registry", err=True)
    try:
        uvicorn.Server(uvicorn.Config(create_app(registry), log_level="warning")).run(sockets=[listener])
    finally:
        registry.close()


COMMANDS = [ui]
