"""Request ids, access logs and HTTP metrics, as one pure ASGI middleware (it sees streamed responses
through to their last byte, which BaseHTTPMiddleware would not).

Each request gets an id (the caller's `X-Request-ID` when it is sane, else a new one) that is echoed
in the response, attached to every log line written while serving it, and put in problem bodies.
The access log line carries the method, route template, status, duration, bytes sent and the
caller's token name and public id: never headers, bodies or secrets.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.registry.logs import request_id_var

from . import problems

access = logging.getLogger("adapters.access")
log = logging.getLogger("adapters.api")

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Request bodies other than uploads are small JSON documents; anything larger is refused unread.
UPLOAD = re.compile(r"/v1/adapters/[^/]+/[^/]+/versions")
MAX_JSON_BODY = 1024 * 1024


class BodyTooLarge(HTTPException):
    """A JSON body over the bound. An HTTPException, so that FastAPI, which turns other errors raised
    while it reads a body into 400, lets it through to the problem handler as 413."""

    def __init__(self) -> None:
        super().__init__(413, f"request bodies are limited to {MAX_JSON_BODY} bytes (uploads excepted)")


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


class Observability:
    def __init__(self, app: ASGIApp, *, metrics: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "adapters_http_requests", "HTTP requests", ["method", "route", "status"], registry=metrics
        )
        self.latency = Histogram(
            "adapters_http_request_duration_seconds",
            "Time to the last byte of the response",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=metrics,
        )
        self.sent = Counter(
            "adapters_http_response_bytes", "Bytes of response bodies", ["route"], registry=metrics
        )
        self.in_flight = Gauge("adapters_http_requests_in_flight", "Requests being served", registry=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Request(scope).headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status, sent, response_started = 500, 0, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        received = 0

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_JSON_BODY:
                    raise BodyTooLarge
            return message

        bounded = not (scope["method"] == "POST" and UPLOAD.fullmatch(scope["path"]))
        declared = Request(scope).headers.get("content-length", "")
        self.in_flight.inc()
        try:
            if bounded and declared.isdigit() and int(declared) > MAX_JSON_BODY:
                raise BodyTooLarge  # refused before a byte is read (a chunked one is, as it arrives)
            await self.app(scope, receive_bounded if bounded else receive, send_with_id)
        except Exception as exc:
            if response_started:  # a stream failed midway (e.g. corrupted bytes): abort the connection
                log.error("response aborted: %s", exc)
                raise
            request = Request(scope)
            if isinstance(exc, BodyTooLarge):
                code, title = problems.HTTP_PROBLEMS[413]
                response = problems.problem(413, code, title, exc.detail, request)
            else:
                response = problems.unexpected_error(request, exc)
            await response(scope, receive, send_with_id)
        finally:
            self.in_flight.dec()
            self._record(scope, status, sent, time.perf_counter() - started)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        self.sent.labels(route).inc(sent)
        principal: Any = scope.get("state", {}).get("principal")
        fields = {
            "method": method,
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "bytes": sent,
            "caller": getattr(principal, "name", None),
            "token_id": getattr(principal, "token_id", None),
        }
        level = logging.DEBUG if scope["path"] in QUIET and status < 400 else logging.INFO
        access.log(level, "%s %s %s", method, scope["path"], status, extra=fields)
