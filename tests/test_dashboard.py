"""`registry ui`: the read-only dashboard, on both dialects, loaded in headless Chromium (Debian's `chromium`).

One registry per dialect (real training on the tiny BERT): `sentiment` with a current and a candidate version
promoted back and forth, `other` renamed to markup, `third` retired, and evaluations that fill some cells of the
task matrix but not all. Labels, data paths and why texts hold markup and quotes too; every page must show them
as text. Screenshots go to the test's tmp folder, or to $REGISTRY_UI_SCREENSHOTS (a CI artifact folder).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update
from sqlalchemy.exc import DBAPIError

from registry.catalog import queries as catalog
from registry.cli.main import cli
from registry.storage import db
from registry.storage.config import Settings
from registry.dashboard.app import create_app, open_read_only, redact
from registry.storage.schema import tasks
from tests import browser
from tests.helpers import make_settings, one_line_error, snapshot
from tests.servers import free_port, wait_for_port

# Markup that would mark the page if it ran: a rendered page must show it as text and stay unmarked.
ATTACK = "<img src=x onerror=\"document.body.dataset.pwned='1'\">'"
EVIL_NAME = f"evil{ATTACK}"
WHY = f"<script>document.body.dataset.pwned='1'</script> \"double\" 'single' {ATTACK}"
LABELS = ("<i>\"no\"</i>", "yes'&<b>")
EPOCHS = 3


def write_task(directory: Path, majority: int) -> Path:
    """Train data where 85% of the labels are LABELS[majority]; dev data mostly LABELS[1]."""
    rng = random.Random(0)
    words = "good great love very bad awful hate not the a this movie".split()

    def rows(n: int, ones: int) -> list[str]:
        return [f"{' '.join(rng.choices(words, k=6))}\t{LABELS[int(i < ones)]}" for i in range(n)]

    directory.mkdir(parents=True)
    (directory / "train.tsv").write_text("\n".join(["sentence\tlabel", *rows(120, 102 if majority else 18)]) + "\n")
    (directory / "dev.tsv").write_text("\n".join(["sentence\tlabel", *rows(40, 30)]) + "\n")
    return directory


def build(settings: Settings, tiny_base: Path, data: Path) -> None:
    """The registry the pages show (see the module's docstring)."""
    runner = CliRunner()
    env = {"REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
           "REGISTRY_STORE": settings.store_url}

    def run(*args: str) -> None:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output

    good, worse = write_task(data / f"good {ATTACK}", 1), write_task(data / "worse", 0)
    train = ("--batch-size", "16", "--epochs", str(EPOCHS), "--metric", "accuracy", "--quiet")
    run("init", "--base", str(tiny_base))
    run("add-task", "sentiment", "--data", str(good), *train)
    run("add-task", "other", "--data", str(good), *train)
    run("eval", "sentiment", "--quiet")  # R[1][0]
    run("add-task", "sentiment", "--data", str(worse), "--new-version", *train)  # a worse candidate
    run("promote", "sentiment", "--version", "2", "--why", WHY)
    run("add-task", "third", "--data", str(good), *train)
    run("eval", "sentiment", "--quiet")  # R[2][0], of version 2; R[2][1] stays empty
    run("retire", "third", "--why", WHY)
    engine = create_engine(settings.db_url)  # a name no command accepts, as a hand-edited database might hold
    with engine.begin() as connection:
        connection.execute(update(tasks).where(tasks.c.name == "other").values(name=EVIL_NAME))
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dashboard(request, tiny_base, tmp_path_factory, pg_skip_reason):
    """A registry with data, and `registry ui` serving it on a free loopback port."""
    if request.param == "postgresql" and pg_skip_reason:
        pytest.skip(pg_skip_reason)
    root = tmp_path_factory.mktemp(f"ui-{request.param}")
    settings, cleanup = make_settings(root, request.param)
    try:
        build(settings, tiny_base, root / "data")
        port = free_port()
        env = {**os.environ, "REGISTRY_HOME": str(settings.home), "REGISTRY_DB_URL": settings.db_url,
               "REGISTRY_STORE": settings.store_url}
        process = subprocess.Popen([sys.executable, "-m", "registry.cli", "ui", "--port", str(port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port("127.0.0.1", port, process)
            yield SimpleNamespace(settings=settings, url=f"http://127.0.0.1:{port}", dialect=request.param,
                                  shots=Path(os.environ.get("REGISTRY_UI_SCREENSHOTS") or root))
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        cleanup()


needs_browser = pytest.mark.skipif(browser.MISSING is not None, reason=browser.MISSING or "")


def load(dashboard, path: str, shot: str, size: str = "1280,900") -> browser.Element:
    """The page at `path` as Chromium renders it, after a screenshot of it (a real PNG)."""
    url = dashboard.url + path
    png = browser.screenshot(url, dashboard.shots / f"dashboard-{shot}-{dashboard.dialect}.png", size)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = browser.dom(url)
    body = page.one("body")
    assert "data-pwned" not in body.attrs, f"markup from the database ran on {path}"
    assert not page.all("img") and not page.all("script"), f"markup from the database became an element on {path}"
    return page


@needs_browser
def test_tasks_page_lists_ready_tasks_sorts_them_and_toggles_retired(dashboard):
    listed = catalog.list_tasks(open_read_only(dashboard.settings), retired=True)
    page = load(dashboard, "/", "tasks")
    rows = page.one("table", id="tasks").all("tr", class_="task")
    assert [row.attrs["data-name"] for row in rows] == ["sentiment", EVIL_NAME]  # `third` is retired
    links = page.all("a", class_="task-link")
    assert [link.text() for link in links] == ["sentiment", " ".join(EVIL_NAME.split())]
    assert links[1].attrs["href"] == "/tasks/" + quote(EVIL_NAME, safe="")
    assert page.one("tr", data_name="sentiment").all("td")[2].text() == "v2"
    by_name = page.one("table", id="tasks").all("th", data_column="name")[0].one("a").attrs["href"]
    assert by_name == "/?sort=name&order=asc"

    descending = load(dashboard, "/?sort=score&order=desc&retired=1", "tasks-retired")
    names = [row.attrs["data-name"] for row in descending.all("tr", class_="task")]
    assert names == [t["name"] for t in sorted(listed, key=lambda t: t["score"], reverse=True)]
    assert "third" in names and descending.one("a", id="retired-toggle").text() == "Hide retired"


@needs_browser
def test_task_page_marks_the_current_version_and_shows_events_runs_and_one_series_per_run(dashboard):
    shown = catalog.show_task(open_read_only(dashboard.settings), "sentiment")
    page = load(dashboard, "/tasks/sentiment", "task", "1280,1560")
    assert page.one("h1", id="task-name").text() == "sentiment"
    assert page.one(id="current-version").text() == "v2"
    versions = page.one("table", id="versions").all("tr", class_="version")
    assert [(row.attrs["data-version"], "current" in row.attrs["class"].split(), row.one("span").text())
            for row in versions] == [("1", False, "candidate"), ("2", True, "current")]
    assert versions[0].one("td", class_="data-source").text().endswith(" ".join(f"good {ATTACK}".split()))
    assert [label.text() for label in page.all("span", class_="label")] == sorted(LABELS)
    events = page.one("table", id="events").all("tr", class_="event")
    assert [row.all("td")[1].text() for row in events] == ["publish", "promote"]
    assert events[1].one("td", class_="why").text() == " ".join(WHY.split())
    runs = page.one("table", id="runs").all("tr", class_="run")
    assert [int(row.attrs["data-run"]) for row in runs] == [run["run"] for run in shown["runs"]]
    assert all(row.all("td")[1].text() == "succeeded" and f"epochs={EPOCHS}" in row.all("td")[3].text() for row in runs)

    epochs = page.one("svg", data_chart="epochs")
    series = epochs.all("g", class_="series")
    assert [s.attrs["data-series"] for s in series] == [f"run {v['run']} (v{v['version']})" for v in shown["versions"]]
    assert all(len(s.one("polyline").attrs["points"].split()) == EPOCHS for s in series)
    evaluations = page.one("svg", data_chart="evaluations").all("g", class_="series")
    measured = [row["version"] for row in catalog.history(open_read_only(dashboard.settings), "sentiment")
                if row["evaluation"] is not None and row["metric"] == "accuracy"]
    assert [(s.attrs["data-series"], len(s.all("circle"))) for s in evaluations] == [
        ("v1", measured.count(1)), ("v2", measured.count(2))]


@needs_browser
def test_a_task_named_with_markup_and_its_why_texts_render_as_text(dashboard):
    page = load(dashboard, "/tasks/" + quote(EVIL_NAME, safe=""), "task-evil")
    assert page.one("h1", id="task-name").text() == " ".join(EVIL_NAME.split())
    retired = load(dashboard, "/tasks/third", "task-retired")
    assert retired.one("table", id="events").all("td", class_="why")[-1].text() == " ".join(WHY.split())
    missing = load(dashboard, "/tasks/" + quote("<b>nope</b>", safe=""), "task-missing")
    assert "no task named '<b>nope</b>'" in missing.one("p", class_="error").text()


@needs_browser
def test_matrix_page_has_one_cell_per_pair_with_its_value_and_names_the_empty_ones(dashboard):
    result = catalog.score_matrix(open_read_only(dashboard.settings))
    page = load(dashboard, "/matrix", "matrix")
    cells = page.one("table", id="matrix").all("td", class_="cell")
    size = len(result["tasks"])
    assert size == 3 and sorted((int(c.attrs["data-i"]), int(c.attrs["data-j"])) for c in cells) == [
        (i, j) for i in range(size) for j in range(i + 1)]
    for cell in cells:
        value = result["matrix"][int(cell.attrs["data-i"])][int(cell.attrs["data-j"])]
        assert cell.text() == ("—" if value is None else f"{value:.4f}")
    empty = [(int(c.attrs["data-i"]), int(c.attrs["data-j"])) for c in cells if "empty" in c.attrs["class"]]
    assert empty == [(2, 1)]
    note = page.one(id="empty-cells").text()
    assert f"{' '.join(EVIL_NAME.split())} after adding third (3 tasks present)" in note
    assert page.one(id="acc").text() == "ACC —" and page.one(id="bwt").text() == "BWT —"  # they wait for R[2][1]
    assert [th.text() for th in page.all("th", class_="task-head")] == [
        " ".join(name.split()) for name in result["tasks"]]


@needs_browser
def test_health_page_shows_the_base_revision_and_store(dashboard):
    base = catalog.base_info(open_read_only(dashboard.settings))
    page = load(dashboard, "/health", "health")
    assert page.one(id="base-sha256").text() == base["sha256"]
    assert page.one(id="revision").text() == db.SCHEMA_REVISION
    assert page.one(id="store").text() == dashboard.settings.store_url
    assert page.one(id="verify").text().startswith("Not recorded")


@needs_browser
def test_registry_serve_shows_the_same_pages_under_ui(dashboard):
    port = free_port()
    env = {**os.environ, "REGISTRY_HOME": str(dashboard.settings.home), "REGISTRY_DB_URL": dashboard.settings.db_url,
           "REGISTRY_STORE": dashboard.settings.store_url}
    process = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, process, timeout=180)
        page = browser.dom(f"http://127.0.0.1:{port}/ui/")
        assert [a.attrs["href"] for a in page.all("a", class_="task-link")][0] == "/ui/tasks/sentiment"
        matrix = browser.dom(f"http://127.0.0.1:{port}/ui/matrix")
        assert len(matrix.all("td", class_="cell")) == 6
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_every_route_only_reads_and_crawling_them_changes_nothing(dashboard):
    registry = open_read_only(dashboard.settings)
    app = create_app(registry)
    methods = {method for route in app.routes for method in getattr(route, "methods", ())}
    assert methods <= {"GET", "HEAD"}, methods
    before = snapshot(dashboard.settings)
    with TestClient(app) as client:
        paths = ["/", "/?retired=1&sort=name&order=desc", "/matrix", "/health", "/tasks/nope",
                 *(f"/tasks/{quote(task['name'], safe='')}" for task in catalog.list_tasks(registry, retired=True))]
        answers = [client.get(path) for path in paths]
        statuses = [answer.status_code for answer in answers]
        assert all(a.headers["content-security-policy"].startswith("default-src 'none'") for a in answers)
        assert client.post("/").status_code == 405
    assert statuses == [200, 200, 200, 200, 404, 200, 200, 200]
    assert snapshot(dashboard.settings) == before
    with pytest.raises(DBAPIError), registry.query() as connection:  # the database itself refuses a write
        connection.execute(update(tasks).values(score=0.0))
    registry.close()


def test_the_dashboard_never_imports_torch(dashboard):
    script = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "import registry.cli.main\n"
        "from registry.storage.config import resolve\n"
        "from registry.dashboard.app import create_app, open_read_only\n"
        "client = TestClient(create_app(open_read_only(resolve())))\n"
        "codes = [client.get(p).status_code for p in ('/', '/tasks/sentiment', '/matrix', '/health')]\n"
        "heavy = ('torch', 'transformers', 'datasets', 'sqlalchemy.orm')\n"
        "print(json.dumps([codes, [m for m in heavy if m in sys.modules]]))\n"
    )
    env = {**os.environ, "REGISTRY_HOME": str(dashboard.settings.home), "REGISTRY_DB_URL": dashboard.settings.db_url,
           "REGISTRY_STORE": dashboard.settings.store_url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[200, 200, 200, 200], []]


def test_store_credentials_never_show(dashboard):
    secret = Settings(home=dashboard.settings.home, db_url=dashboard.settings.db_url,
                      store_url="s3://AKIAKEY:s3cr3t@bucket/artifacts?token=t0ken&region=eu")
    registry = open_read_only(secret)
    with TestClient(create_app(registry)) as client:
        page = client.get("/health").text
    registry.close()
    assert "s3cr3t" not in page and "AKIAKEY" not in page and "t0ken" not in page
    assert "s3://***@bucket/artifacts?token=***&amp;region=***" in page
    assert redact("/data/registry/artifacts") == "/data/registry/artifacts"
    assert redact("memory://x") == "memory://x"


def test_ui_refuses_a_missing_registry_and_a_busy_port_in_one_line(run_cli, tiny_base):
    assert "registry init" in one_line_error(run_cli("ui"))
    assert run_cli("init", "--base", str(tiny_base)).exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        line = one_line_error(run_cli("ui", "--port", str(taken.getsockname()[1])))
    assert "cannot listen on 127.0.0.1" in line and "--port" in line
