"""What `registry serve` admits, and how it stays up under cheap attacks.

Every limit here costs the server less than the request it refuses: a body's inputs and texts are
counted (one `json.loads`, a walk of at most `max_inputs` entries) before the request models validate
it; validation errors are cut to the first few; a connection that has not sent its headers within
`read_seconds` is closed; a bearer token guards every route but `/healthz`; the same log line is
written at most once a minute; and a stop signal ends the process within `grace_seconds` whatever is
stuck, a second signal at once.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("registry.serve")

MAX_ERRORS = 5  # validation errors in one 422 answer
MAX_ERROR_INPUT = 80  # characters of an offending input echoed back in an error
# WordPiece turns a word of more than 100 characters into one [UNK]: no token stands for more characters
# (whitespace and control characters aside), so text past max_length * 100 cannot reach the model.
CHARS_PER_TOKEN = 100
REPEAT_SECONDS = 60.0
TOKEN_ENV = "REGISTRY_SERVE_TOKEN"


# --------------------------------------------------------------------------------------------
# request bodies


def oversized(raw: bytes, max_inputs: int, max_text_chars: int) -> tuple[int, str] | None:
    """(413, why) when a predict body holds too many inputs or too long a text; None otherwise.

    Cheap and before validation: malformed bodies are left to the request models (they answer 422).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, list):
        return None
    if len(inputs) > max_inputs:
        return 413, f"{len(inputs)} inputs in one request, at most {max_inputs}: split the request"
    for i, entry in enumerate(inputs):
        texts = [entry] if isinstance(entry, str) else [entry.get("text"), entry.get("text_pair")] \
            if isinstance(entry, dict) else []
        for text in texts:
            if isinstance(text, str) and len(text) > max_text_chars:
                return 413, (f"input {i} has a text of {len(text)} characters, at most {max_text_chars} "
                             "(--max-text-chars): shorten it")
    return None


def short_errors(errors: list[dict]) -> list[dict]:
    """The first MAX_ERRORS validation errors, each echoing at most MAX_ERROR_INPUT characters of its input."""
    kept = []
    for error in errors[:MAX_ERRORS]:
        error = {key: error[key] for key in ("loc", "msg", "type", "input") if key in error}
        if "input" in error:
            shown = json.dumps(error["input"], default=str)
            error["input"] = shown if len(shown) <= MAX_ERROR_INPUT else shown[:MAX_ERROR_INPUT] + "…"
        kept.append(error)
    if len(errors) > MAX_ERRORS:
        kept.append({"loc": ["body"], "msg": f"{len(errors) - MAX_ERRORS} more problems not shown",
                     "type": "value_error"})
    return kept


def usable(text: str, max_length: int) -> str:
    """`text` cut to what a task of `max_length` tokens can read (see CHARS_PER_TOKEN)."""
    return text[: max_length * CHARS_PER_TOKEN]


# --------------------------------------------------------------------------------------------
# authentication


class BearerAuth:
    """ASGI middleware: every route but /healthz needs `Authorization: Bearer TOKEN` (compared in constant time)."""

    OPEN = frozenset({"/healthz"})

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            return await self.app(scope, receive, send)
        given = b"".join(value for name, value in scope["headers"] if name == b"authorization")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        body = b'{"detail":"missing or wrong bearer token: send Authorization: Bearer TOKEN"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when `host` is reachable from other machines and no token guards it."""
    if token:
        return None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"warning: listening on {host} without a token: anyone who reaches it can use every task; "
            f"pass --token or set {TOKEN_ENV}")


# --------------------------------------------------------------------------------------------
# connections


def no_delay(transport) -> None:
    """Send small writes at once (TCP_NODELAY) on a TCP connection. asyncio sets it only on sockets made with proto
    IPPROTO_TCP, not on uvicorn's (proto 0); without it, h11 writing an answer's headers and body apart waited for the
    client's delayed ACK: some 40 ms on every answer, /healthz included."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def header_deadline(seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose next request's headers are not in within `seconds`.

    uvicorn's keep-alive timer stops at the first byte; a client sending one byte a second (slowloris)
    would hold the connection forever.
    """

    class Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            no_delay(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            cycle = self.cycle
            self.loop.call_later(seconds, self._expire, cycle)

        def _expire(self, cycle) -> None:
            idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
            if idle and not self.transport.is_closing():
                self.transport.close()

    return Protocol


# --------------------------------------------------------------------------------------------
# logs


class Repeats(logging.Filter):
    """Lets a given line (logger, message, exception type) through at most once per `seconds`; counts the rest."""

    def __init__(self, seconds: float = REPEAT_SECONDS) -> None:
        super().__init__()
        self.seconds = seconds
        self.seen: dict[tuple, list] = {}  # key: [last written (monotonic), suppressed since]
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        key = (record.name, record.msg, kind)
        now = time.monotonic()
        with self.lock:
            last = self.seen.get(key)
            if last is not None and now - last[0] < self.seconds:
                last[1] += 1
                return False
            suppressed = last[1] if last is not None else 0
            self.seen[key] = [now, 0]
            if len(self.seen) > 10_000:  # bounded: forget the oldest half
                for old in sorted(self.seen, key=lambda k: self.seen[k][0])[:5_000]:
                    del self.seen[old]
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last {self.seconds:g} s not shown)"
        return True


def limit_repeats(*configured: str) -> Repeats:
    """One Repeats filter on the handlers of `configured` loggers (uvicorn's), and on a stderr handler for ours."""
    repeats = Repeats()
    for name in ("registry", "asyncio"):  # asyncio logs accept errors (out of file descriptors) one by one
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
    for name in ("registry", "asyncio", *configured):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(repeats)
    return repeats


# --------------------------------------------------------------------------------------------
# stopping


class BoundedServer(uvicorn.Server):
    """uvicorn's server, but a stop signal ends the process within `grace` seconds, and a second one at once.

    After the first SIGTERM or SIGINT uvicorn stops accepting, answers what is in flight and the app drains
    its queue; if that is not done within `grace` seconds (a stuck model, a slow client), the process exits.
    """

    def __init__(self, config: uvicorn.Config, grace: float) -> None:
        super().__init__(config)
        self.grace = grace

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:
            log.warning("a second stop signal: stopping now, unanswered requests are dropped")
            stop_now(sig)
        super().handle_exit(sig, frame)
        timer = threading.Timer(self.grace, self._overdue, (sig,))
        timer.daemon = True
        timer.start()

    def _overdue(self, sig: int) -> None:
        log.warning("still not stopped %g s after the stop signal (--grace-seconds): stopping now", self.grace)
        stop_now(sig)


def stop_now(sig: int) -> None:
    """End the process as the signal would have: no cleanup that could block."""
    sys.stderr.flush()
    os._exit(128 + sig)

