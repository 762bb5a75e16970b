"""`registry serve`: every task on one base over HTTP, with dynamic batching across requests and tasks.

Requests are checked on the event loop (size, shape, tasks), then wait in one queue as (task, text)
inputs. One batcher takes a window from the queue (up to `max_batch_size` inputs; it waits up to
`max_wait_ms` after the oldest input for the window to fill), and the model thread runs it:
sorted by length, cut into forward passes of at most `max_batch_tokens` padded tokens, each mixing
tasks. A failure inside a window fails the requests in that window (500) and nothing else. From the
registry, a poller calls `tasks.refresh()` every `poll_seconds` off the event loop: new, replaced or
dropped tasks take effect at the next window without a restart (see registry.live). /metrics says where the time
goes: each answered request's seconds by stage (REQUEST_STAGES), and the model thread's (predictor.MODEL_STAGES).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Summary,
                               generate_latest)
from pydantic import BaseModel, ConfigDict, Field

from registry.errors import NonFiniteOutput
from registry.serving import limits as admission
from registry.serving.openapi import served_schema
from registry.serving.predictor import Laps, Prediction, Predictor, Tally, TaskSpec, Text
from registry.storage.config import ServeLimits as Limits

log = logging.getLogger("registry.serve")

DEFAULT_LIMITS = Limits()  # frozen: one shared default is safe
# Where an answered predict request's time goes, from the middleware taking it to its answer handed to uvicorn:
# read (the body arriving, the size checks), parse (FastAPI's JSON decoding and validation, our checks, queueing),
# queue (waiting for a window, and for the model thread), model (the windows that ran its inputs), serialise (the JSON
# answer), send (the rest: the route's wrappers, the answer handed on).
REQUEST_STAGES = ("read", "parse", "queue", "model", "serialise", "send")
LAPS = "registry.laps"  # the ASGI scope key of a predict request's stopwatch (a Laps)


# --------------------------------------------------------------------------------------------
# the HTTP API's bodies


class Input(BaseModel):
    """One input: a text, with its pair for a pair task, and its task in the mixed form."""

    model_config = ConfigDict(extra="forbid")
    text: str
    text_pair: str | None = None
    task: str | None = None


class PredictRequest(BaseModel):
    """One task for every input (`task` + strings), or each input naming its own task (the mixed form)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "sst2", "inputs": ["a gripping, funny film"]},
                {
                    "inputs": [
                        {"task": "sst2", "text": "a dull film"},
                        {"task": "mrpc", "text": "He left.", "text_pair": "He went."},
                    ]
                },
            ]
        },
    )
    task: str | None = None
    inputs: list[str | Input] = Field(min_length=1)


class Result(BaseModel):
    """One input's answer: the label (the value, for regression), its probability and every class's."""

    task: str
    label: str | float
    score: float | None
    probabilities: dict[str, float] | None


class PredictResponse(BaseModel):
    results: list[Result]


class TaskInfo(BaseModel):
    name: str
    position: int
    task_type: str
    labels: list[str] | None
    metric: str
    score: float | None
    adapter_sha256: str
    available: bool = True  # false for a quarantined task (registry.live), with its problem
    problem: str | None = None


class RequestError(Exception):
    """A request refused before it is queued: its HTTP status and detail."""

    def __init__(self, status: int, detail, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def field_error(loc: list, message: str) -> RequestError:
    """A 422 naming the field, shaped like FastAPI's own validation errors."""
    return RequestError(422, [{"loc": ["body", *loc], "msg": message, "type": "value_error"}])


# --------------------------------------------------------------------------------------------
# metrics


class Metrics:
    """What `GET /metrics` exposes, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "registry_serve_requests",
            "Predict requests, by task (a mixed request counts once per task).",
            ["task"],
            registry=self.registry,
        )
        self.errors = Counter("registry_serve_errors", "Refused or failed predict requests, by task and HTTP status.",
                              ["task", "status"], registry=self.registry)
        self.latency = Histogram("registry_serve_request_seconds", "Predict request latency, from arrival to answer.",
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("registry_serve_batch_inputs", "Inputs per batch window the model ran.",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.queue_depth = Gauge("registry_serve_queue_inputs", "Inputs waiting in the queue.", registry=self.registry)
        self.tasks_loaded = Gauge("registry_serve_tasks_loaded", "Tasks being served.", registry=self.registry)
        self.tasks_unavailable = Gauge("registry_serve_tasks_unavailable",
                                       "Tasks quarantined: they cannot be served (see /v1/tasks).",
                                       registry=self.registry)
        self.swaps = Counter("registry_serve_task_set_changes", "Times the served tasks changed while serving.",
                             registry=self.registry)
        self.passes = Counter("registry_serve_forward_passes", "Forward passes the model ran.", registry=self.registry)
        self.tokens = Counter("registry_serve_tokens", "Real (not padding) tokens in the forward passes.",
                              registry=self.registry)
        self.slots = Counter("registry_serve_token_slots", "Token slots (real + padding) in the forward passes.",
                             registry=self.registry)
        self.padding = Gauge("registry_serve_padding_fraction",
                             "Fraction of the token slots of every forward pass so far that were padding.",
                             registry=self.registry)
        stages = Summary("registry_serve_request_stage_seconds",
                         "Seconds of answered predict requests by stage (read, parse, queue, model, serialise, send); "
                         "summed over concurrent requests.", ["stage"], registry=self.registry)
        self.request_stages = {stage: stages.labels(stage) for stage in REQUEST_STAGES}
        self.model_stages = Summary("registry_serve_model_stage_seconds",
                                    "Seconds of the model thread by stage (tokenise, batch, forward, padding, output) "
                                    "and backend, one observation a window.", ["stage", "backend"],
                                    registry=self.registry)
        self.tally = Tally()

    def answered(self, seconds: dict[str, float]) -> None:
        """Count one answered request's seconds by stage."""
        for stage, summary in self.request_stages.items():
            summary.observe(seconds.get(stage, 0.0))

    def ran(self, tally: Tally, backend: str) -> None:
        """Count one window's forward passes, their tokens and its seconds by stage on `backend`."""
        for stage, seconds in tally.seconds.items():
            self.model_stages.labels(stage, backend).observe(seconds)
        self.passes.inc(tally.passes)
        self.tokens.inc(tally.tokens)
        self.slots.inc(tally.slots)
        self.tally.passes += tally.passes
        self.tally.tokens += tally.tokens
        self.tally.slots += tally.slots
        self.padding.set(self.tally.padding)


# --------------------------------------------------------------------------------------------
# the queue and the batcher


@dataclass(eq=False)
class Job:
    """One request's inputs in the queue; `taken` of them are in a window already."""

    items: list[tuple[str, Text]]
    future: asyncio.Future
    arrived: float
    taken: int = 0
    done: int = 0
    model_seconds: float = 0.0  # of the windows that ran its inputs
    results: list[Prediction | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)


class Batcher:
    """One queue of inputs from every request; windows of it run on one model thread."""

    def __init__(self, tasks, limits: Limits, metrics: Metrics) -> None:
        self.tasks = tasks  # FixedTasks or RegistryTasks: `.predictor` is the Predictor in use now
        self.limits = limits
        self.metrics = metrics
        self.queue: deque[Job] = deque()
        self.queued = 0  # inputs waiting, not yet in a window
        self.arrived = asyncio.Event()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def submit(self, items: list[tuple[str, Text]]) -> Job:
        """Queue a request's inputs (its answers: `.future`); 503 when the queue cannot take them."""
        if self.queued + len(items) > self.limits.max_queue:
            raise RequestError(
                503,
                f"the queue is full ({self.queued} inputs waiting, at most {self.limits.max_queue}): retry shortly",
                {"Retry-After": "1"},
            )
        job = Job(items, asyncio.get_running_loop().create_future(), time.monotonic())
        self.queue.append(job)
        self.queued += len(items)
        self.metrics.queue_depth.set(self.queued)
        self.arrived.set()
        return job

    async def run(self) -> None:
        """Take windows and run them, one at a time, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = self.queue[0].arrived + self.limits.max_wait_ms / 1000
            while self.queued < self.limits.max_batch_size and (wait := deadline - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), wait)
                except asyncio.TimeoutError:
                    break
            await self._run(self._take())

    def _take(self) -> list[tuple[Job, int, int]]:
        """Up to max_batch_size inputs from the front of the queue, as (job, start, end) pieces."""
        window, room = [], self.limits.max_batch_size
        while self.queue and room:
            job = self.queue[0]
            end = min(len(job.items), job.taken + room)
            window.append((job, job.taken, end))
            room -= end - job.taken
            job.taken = end
            if end == len(job.items):
                self.queue.popleft()
        self.queued -= self.limits.max_batch_size - room
        self.metrics.queue_depth.set(self.queued)
        return window

    async def _run(self, window: list[tuple[Job, int, int]]) -> None:
        """Predict a window on the model thread and hand each piece's answers to its request."""
        predictor = self.tasks.predictor
        live = []
        for job, start, end in window:
            gone = sorted(
                {task for task, _ in job.items[start:end] if predictor is None or task not in predictor.specs}
            )
            if gone:  # dropped from the registry after the request was checked
                fail(job, RequestError(404, unknown_task(gone[0], predictor)))
            elif not job.future.done():
                live.append((job, start, end))
        items = [item for job, start, end in live for item in job.items[start:end]]
        if not items:
            return
        self.metrics.batch_size.observe(len(items))
        tally = Tally()
        began = time.perf_counter()
        try:
            predictions = await asyncio.get_running_loop().run_in_executor(
                self.model_thread, lambda: predictor.predict_mixed(items, batch_size=self.limits.max_batch_size,
                                                                  max_tokens=self.limits.max_batch_tokens, tally=tally))
        except NonFiniteOutput as exc:  # never an answer: those requests get an error naming the task; others theirs
            predictions = exc.predictions
        except Exception as exc:  # this window's requests fail; the server goes on
            log.exception("a batch of %d inputs failed", len(items))
            for job, _, _ in live:
                fail(job, RequestError(500, f"the batch holding this request failed ({type(exc).__name__}: {exc})"))
            return
        took = time.perf_counter() - began
        self.metrics.ran(tally, predictor.backend)
        answers = iter(predictions)
        for job, start, end in live:
            job.model_seconds += took
            for i in range(start, end):
                job.results[i] = next(answers)
            broken = sorted({job.items[i][0] for i in range(start, end) if job.results[i] is None})
            if broken:
                fail(job, RequestError(500, f"task {broken[0]!r} gave NaN or infinite outputs for this request: "
                                            "its adapter is broken, no answer is given"))
            job.done += end - start
            if job.done == len(job.items) and not job.future.done():
                job.future.set_result(job.results)

    async def drain(self) -> None:
        """Wait until every queued input has been answered."""
        while self.queue:
            await asyncio.sleep(0.01)


def fail(job: Job, error: RequestError) -> None:
    """Answer a request with an error (its inputs still queued are skipped)."""
    if not job.future.done():
        job.future.set_exception(error)


def unknown_task(name: str, predictor: Predictor | None) -> str:
    known = ", ".join(predictor.tasks) if predictor is not None else "(none yet)"
    return f"no task named {name!r} is served here; tasks: {known}"


# --------------------------------------------------------------------------------------------
# the app


def served_now(task: str, predictor: Predictor | None, unavailable: dict[str, dict] | None) -> TaskSpec:
    """The spec of `task` if it is served now; 503 when it is quarantined, 404 when it is unknown."""
    if task in (unavailable or {}):
        raise RequestError(503, f"task {task!r} is unavailable here: {unavailable[task]['problem']}")
    if predictor is None or task not in predictor.specs:
        raise RequestError(404, unknown_task(task, predictor))
    return predictor.specs[task]


def parse(body: PredictRequest, predictor: Predictor | None, limits: Limits,
          unavailable: dict[str, dict] | None = None) -> list[tuple[str, Text]]:
    """The request's (task, text) inputs, checked against the tasks served now (503 for a quarantined one)."""
    if len(body.inputs) > limits.max_inputs:
        raise RequestError(
            413, f"{len(body.inputs)} inputs in one request, at most {limits.max_inputs}: split the request"
        )
    if body.task is not None:  # checked even when every input names its own
        served_now(body.task, predictor, unavailable)
    items = []
    for i, entry in enumerate(body.inputs):
        if isinstance(entry, str):
            entry = Input(text=entry)
        task = entry.task if entry.task is not None else body.task
        if task is None:
            raise field_error(["inputs", i, "task"], "no task: give \"task\" in the body or in every input")
        spec = served_now(task, predictor, unavailable)
        if spec.pair != (entry.text_pair is not None):
            want = "a text_pair" if spec.pair else "no text_pair"
            raise field_error(
                ["inputs", i, "text_pair"], f"task {task!r} reads {' + '.join(spec.text_columns)}: give {want}"
            )
        for name, text in (("text", entry.text), ("text_pair", entry.text_pair)):
            if text is not None and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise field_error(["inputs", i, name], "not valid Unicode text (a lone surrogate)") from None
        text = admission.usable(entry.text, spec.max_length)  # the model reads no further
        items.append((task, text if entry.text_pair is None else (text, admission.usable(entry.text_pair,
                                                                                          spec.max_length))))
    return items


class BodyLimit:
    """ASGI middleware: a body over `max_body_bytes` (413) or slower than `read_seconds` (408) is refused before
    anything parses it; a predict body with too many inputs or too long a text gets 413 before it is validated."""

    def __init__(self, app, limits: Limits, metrics: Metrics) -> None:
        self.app, self.limits, self.max_bytes, self.metrics = app, limits, limits.max_body_bytes, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        laps = Laps()
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body, more = [], True
        try:
            async with asyncio.timeout(self.limits.read_seconds):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    body.append(message.get("body", b""))
                    more = message.get("more_body", False)
                    if sum(map(len, body)) > self.max_bytes:
                        return await self._refuse(scope, receive, send)
        except TimeoutError:
            return await self._refuse(scope, receive, send, 408,
                                      f"the request body did not arrive within {self.limits.read_seconds:g} s")
        whole = {"type": "http.request", "body": b"".join(body), "more_body": False}
        if scope["path"] == "/v1/predict" and scope["method"] == "POST":
            refusal = admission.oversized(whole["body"], self.limits.max_inputs, self.limits.max_text_chars)
            if refusal is not None:
                return await self._refuse(scope, receive, send, *refusal)
            laps.lap("read")
            scope[LAPS] = laps
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return whole
            return await receive()

        await self.app(scope, replay, send)
        if "serialise" in laps.seconds:  # an answered predict request
            laps.lap("send")
            self.metrics.answered(laps.seconds)

    async def _refuse(self, scope, receive, send, status: int = 413, detail: str | None = None) -> None:
        self.metrics.errors.labels("", str(status)).inc()
        detail = detail or f"the request body is over {self.max_bytes} bytes: split the request"
        await JSONResponse({"detail": detail}, status)(scope, receive, send)


def create_app(tasks, limits: Limits = DEFAULT_LIMITS, *, watch: bool = True, token: str | None = None) -> FastAPI:
    """The ASGI app serving `tasks` (FixedTasks or RegistryTasks) within `limits`; `watch` polls `tasks.refresh()`;
    with `token`, every route but /healthz needs it as a bearer token."""
    metrics = Metrics()
    app = FastAPI(title="adapter-registry", summary="Every task of one frozen base, batched across requests and tasks.",
                  version="1", lifespan=partial(lifespan, tasks=tasks, limits=limits, metrics=metrics, watch=watch))
    app.add_middleware(BodyLimit, limits=limits, metrics=metrics)
    if token:
        app.add_middleware(admission.BearerAuth, token=token)  # outermost: nothing else runs for a stranger
    exact_openapi(app, tasks, limits, secured=bool(token))
    add_error_handlers(app, metrics)
    add_routes(app, tasks, limits, metrics)
    return app


def exact_openapi(app: FastAPI, tasks, limits: Limits, *, secured: bool) -> None:
    """Replace FastAPI's document with one whose predict body is as exact as the tasks served now."""
    generic_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document, with the predict body as exact as the tasks served now (see registry.serving.openapi)."""
        app.openapi_schema = None
        return served_schema(generic_openapi(), tasks.predictor, limits, secured=secured)

    app.openapi = openapi


def loaded(tasks) -> int:
    """How many tasks are served now."""
    predictor = tasks.predictor
    return len(predictor.tasks) if predictor is not None else 0


def count_tasks(tasks, metrics: Metrics) -> None:
    """The gauges of tasks served and tasks quarantined (registry.serving.live), as they are now."""
    metrics.tasks_loaded.set(loaded(tasks))
    metrics.tasks_unavailable.set(len(tasks.unavailable))


async def poll(tasks, limits: Limits, metrics: Metrics) -> None:
    """Every `poll_seconds`, let `tasks` look at their source again; a change swaps the predictor."""
    while True:
        await asyncio.sleep(limits.poll_seconds)
        try:
            if await asyncio.to_thread(tasks.refresh):
                metrics.swaps.inc()
                count_tasks(tasks, metrics)
                log.warning(
                    "now serving %d task(s): %s",
                    loaded(tasks),
                    ", ".join(tasks.predictor.tasks if tasks.predictor else []),
                )
        except Exception:  # the registry is unreachable or an artifact is bad: keep serving what is loaded
            log.exception("could not refresh the served tasks; serving those loaded")


@asynccontextmanager
async def lifespan(app: FastAPI, *, tasks, limits: Limits, metrics: Metrics, watch: bool):
    """The server's life: the batcher (in `app.state.batcher`) and the poller run; on stop, drain, then cancel."""
    batcher = Batcher(tasks, limits, metrics)
    app.state.batcher = batcher
    count_tasks(tasks, metrics)
    running = [asyncio.create_task(batcher.run())]
    if watch:
        running.append(asyncio.create_task(poll(tasks, limits, metrics)))
    try:
        yield
    finally:  # uvicorn has stopped taking requests and waited for those in flight
        try:
            await asyncio.wait_for(batcher.drain(), limits.grace_seconds)
            log.warning("drained the queue; stopping")
        except asyncio.TimeoutError:
            log.warning("the queue did not drain in %g s (--grace-seconds); stopping", limits.grace_seconds)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        batcher.model_thread.shutdown(wait=True)


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """A malformed body is FastAPI's 422 (counted); a RequestError is its status and detail."""

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("", "422").inc()
        return JSONResponse({"detail": admission.short_errors(list(exc.errors()))}, 422)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)


def add_routes(app: FastAPI, tasks, limits: Limits, metrics: Metrics) -> None:
    """/v1/predict, /v1/tasks, /healthz, /readyz, /metrics."""

    @app.post("/v1/predict", response_model=PredictResponse,
              responses={400: {"description": "A body that is not JSON text"},
                         404: {"description": "Unknown task"}, 408: {"description": "The body came too slowly"},
                         413: {"description": "Too many inputs, bytes, or characters in one text"},
                         422: {"description": "Malformed body"}, 503: {"description": "Queue full"}})
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        """Predict every input: one task for all (`task`), or each input naming its own (the mixed form)."""
        started = time.monotonic()
        laps = request.scope[LAPS]
        named = {entry.task for entry in body.inputs if not isinstance(entry, str) and entry.task} | (
            {body.task} - {None}
        )
        predictor = tasks.predictor
        counted = sorted(named & set(predictor.specs)) if predictor is not None else []
        for task in counted:
            metrics.requests.labels(task).inc()
        try:
            job = app.state.batcher.submit(parse(body, predictor, limits, tasks.unavailable))
            laps.lap("parse")
            results = await job.future
        except RequestError as exc:
            for task in counted or [""]:
                metrics.errors.labels(task, str(exc.status)).inc()
            raise
        metrics.latency.observe(time.monotonic() - started)
        laps.seconds["queue"] = laps.lap("queue") - job.model_seconds
        laps.seconds["model"] = job.model_seconds
        response = JSONResponse({"results": [result.as_dict() for result in results]})
        laps.lap("serialise")
        return response

    @app.get("/v1/tasks", response_model=list[TaskInfo])
    async def list_tasks() -> JSONResponse:
        """The tasks served now, in registry order: name, position, type, labels, metric, score, adapter sha256;
        then quarantined ones, with `available` false and their problem."""
        predictor = tasks.predictor
        served = [predictor.about[name] for name in predictor.tasks] if predictor is not None else []
        return JSONResponse(served + list(tasks.unavailable.values()))

    @app.get("/healthz")
    async def healthz() -> dict:
        """Live: the server answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "No task loaded"}})
    async def readyz() -> JSONResponse:
        """Ready: the model is loaded with at least one task (503 otherwise); quarantined tasks are listed."""
        n = loaded(tasks)
        return JSONResponse({"status": "ready" if n else "no tasks loaded", "tasks": n,
                             "unavailable": sorted(tasks.unavailable)}, 200 if n else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        """Prometheus exposition: requests and errors per task, latency, batch sizes, queue depth, tasks loaded."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
