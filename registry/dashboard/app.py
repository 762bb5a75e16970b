"""The dashboard's ASGI app: four GET pages over one registry, on a connection the database keeps read-only."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader
from sqlalchemy import Engine, event

from registry.catalog import queries as catalog
from registry.storage import db
from registry.storage.config import Settings
from registry.storage.core import Opened, open_registry
from registry.dashboard.charts import line_chart
from registry.errors import RegistryError, UnknownTask

# (column, heading) of the Tasks page, in order; each heading sorts by its column
TASK_COLUMNS = (("position", "#"), ("name", "name"), ("version", "current"), ("task_type", "type"),
                ("metric", "metric"), ("score", "score"), ("trainable_params", "trainable parameters"),
                ("status", "status"), ("retired_at", "retired"), ("created_at", "created"))
READ_ONLY = {"sqlite": "PRAGMA query_only = ON", "postgresql": "SET TRANSACTION READ ONLY"}
# The pages hold no script and load nothing: should a value ever escape escaping, the browser still runs none of it.
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                      "form-action 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def open_read_only(settings: Settings) -> Opened:
    """The registry at `settings`, every transaction of which the database refuses to write in."""
    registry = open_registry(settings)
    read_only(registry.engine)
    return registry


def read_only(engine: Engine) -> None:
    """Make each transaction begun on `engine` read-only (SQLite's query_only, PostgreSQL's READ ONLY)."""
    statement = READ_ONLY.get(engine.dialect.name)
    if statement is None:  # another dialect: the pages still only read
        return

    @event.listens_for(engine, "begin")
    def _read_only(connection) -> None:
        connection.exec_driver_sql(statement)


def redact(url: str) -> str:
    """A store URL with any user, password and query values replaced by ***; a plain path as it is."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a path (C: on Windows)
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def number(value: Any, digits: int = 4) -> str:
    """A score to `digits` decimals, a count with thousands separators, anything else as text; None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def duration(run: dict[str, Any]) -> str:
    """How long a run took (or '—' while it has not finished)."""
    if not run["finished_at"]:
        return "—"
    seconds = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def sort_rows(rows: list[dict], column: str, descending: bool) -> list[dict]:
    """Rows by `column` (empty values last either way)."""
    present = sorted((row for row in rows if row[column] is not None), key=lambda row: row[column],
                     reverse=descending)
    return present + [row for row in rows if row[column] is None]


def epoch_chart(task: dict, rows: list[dict]) -> dict | None:
    """The validation metric per epoch, one series per run (None before any epoch is recorded)."""
    published = {version["run"]: version["version"] for version in task["versions"]}
    series = []
    for run in task["runs"]:
        points = [(row["epoch"], row["value"]) for row in rows if row["run"] == run["run"]
                  and row["split"] == "validation" and row["metric"] == task["metric"] and row["epoch"] is not None]
        if points:
            version = published.get(run["run"])
            series.append((f"run {run['run']}" + (f" (v{version})" if version else ""), points))
    if not series:
        return None
    epochs = {x for _, points in series for x, _ in points}
    return line_chart(series, lambda x: f"{x:.0f}", x_count=min(len(range(min(epochs), max(epochs) + 1)), 10))


def evaluation_chart(task: dict, rows: list[dict]) -> dict | None:
    """Every later evaluation of the task's metric over time, one series per version (None before any)."""
    by_version: dict[Any, list[tuple[float, float]]] = {}
    for row in rows:
        if row["evaluation"] is not None and row["metric"] == task["metric"]:
            moment = datetime.fromisoformat(row["recorded_at"]).timestamp()
            by_version.setdefault(row["version"], []).append((moment, row["value"]))
    if not by_version:
        return None
    series = [(f"v{version}", points) for version, points in sorted(by_version.items(), key=lambda kv: str(kv[0]))]
    moments = [x for _, points in series for x, _ in points]
    shape = "%H:%M:%S" if max(moments) - min(moments) < 86400 else "%Y-%m-%d"
    return line_chart(series, lambda x: datetime.fromtimestamp(x, timezone.utc).strftime(shape), x_count=3)


def matrix_view(result: dict) -> dict[str, Any]:
    """R[i][j] as rows of cells (j <= i) with a heat colour each, and the cells no evaluation has filled yet."""
    values = [value for row in result["matrix"] for value in row if value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    rows, empty = [], []
    for i, scores in enumerate(result["matrix"]):
        cells = []
        for j, value in enumerate(scores[: i + 1]):
            share = (value - low) / (high - low) if value is not None and high > low else 1.0
            cells.append({"i": i, "j": j, "value": value, "light": round(92 - 50 * share)})
            if value is None:
                empty.append((result["tasks"][j], result["tasks"][i], i + 1))
        rows.append({"name": result["tasks"][i], "cells": cells, "blank": len(scores) - i - 1})
    return {**result, "rows": rows, "empty": empty}


def hyperparams(run: dict[str, Any]) -> str:
    """A run's hyper-parameters as `key=value` pairs."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(run["hyperparams"].items()))


def templates() -> Environment:
    """The page templates shipped in this package, autoescaping every value they print."""
    pages = Environment(loader=PackageLoader("registry.dashboard"), autoescape=True, trim_blocks=True,
                        lstrip_blocks=True)
    pages.filters.update(num=number, part=lambda value: quote(str(value), safe=""), duration=duration,
                         hyperparams=hyperparams)
    return pages


def create_app(registry: Opened) -> FastAPI:
    """The dashboard of `registry` (open it with `open_read_only`): Tasks, a task, Matrix, Base and health."""
    pages = templates()
    app = FastAPI(title="adapter-registry dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # "/ui" when mounted in `registry serve`
        return HTMLResponse(pages.get_template(template).render(root=root, **context), status, headers=HEADERS)

    @app.exception_handler(RegistryError)
    async def failed(request: Request, exc: RegistryError) -> HTMLResponse:
        return render(request, "error.html", 404 if isinstance(exc, UnknownTask) else 503, message=str(exc))

    @app.get("/", response_class=HTMLResponse)
    def task_list(request: Request, sort: str = "position", order: str = "asc", retired: bool = False):
        """Tasks: sortable by any column (?sort=COLUMN&order=asc|desc), retired ones with ?retired=1."""
        columns = dict(TASK_COLUMNS)
        sort = sort if sort in columns else "position"
        rows = sort_rows(catalog.list_tasks(registry, retired=retired), sort, order == "desc")
        shown = [(column, heading) for column, heading in TASK_COLUMNS if retired or column != "retired_at"]
        return render(request, "tasks.html", rows=rows, columns=shown, sort=sort, order=order, retired=retired)

    @app.get("/tasks/{name:path}", response_class=HTMLResponse)
    def task_page(request: Request, name: str):
        """One task: versions, events, runs, and its charts."""
        task = catalog.show_task(registry, name)
        rows = catalog.history(registry, name)
        return render(request, "task.html", task=task, epochs=epoch_chart(task, rows),
                      evaluations=evaluation_chart(task, rows))

    @app.get("/matrix", response_class=HTMLResponse)
    def matrix(request: Request):
        """R[i][j] as a heatmap with ACC, BWT and FWT."""
        return render(request, "matrix.html", m=matrix_view(catalog.score_matrix(registry)))

    @app.get("/health", response_class=HTMLResponse)
    def health(request: Request):
        """The base, the schema revision, where the database and store are (no credentials)."""
        return render(request, "health.html", base=catalog.base_info(registry),
                      revision=db.current_revision(registry.engine), expected=db.SCHEMA_REVISION,
                      database=db.describe(registry.engine), store=redact(registry.settings.store_url),
                      tasks=catalog.list_tasks(registry, retired=True))

    return app
