"""The one place where errors become HTTP: RFC 9457 problem details (`application/problem+json`).

Every domain error has a stable `code` (registry/errors.py); its problem `type` is
`https://adapters.dev/problems/<code>`, its `title` is fixed per code, and `detail` is the error's
message. Request validation failures are `validation-error` (422, with the failing fields); a body
that cannot be read as JSON is `invalid-body` (400); unknown routes and methods are `not-found` (404)
and `method-not-allowed` (405); anything unexpected is `internal-error` (500) with the request id and
no internals.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.compress.errors import CompressError
from adapters.registry import errors
from adapters.registry.db import is_connection_error, unavailable
from adapters.registry.logs import request_id_var

from .schemas import Problem

log = logging.getLogger("adapters.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://adapters.dev/problems/"
# 503s of a passing kind (database or blob store unreachable) say when to try again (Retry-After).
TRANSIENT = (errors.ServiceUnavailable, errors.StorageError)

# Status per domain error code; codes not listed (and subclasses of none listed) are 500.
STATUS: dict[str, int] = {
    errors.NotFound.code: 404,
    errors.BlobNotFound.code: 500,  # a version whose blob is gone: the store lost data
    errors.InvalidName.code: 400,
    errors.InvalidRef.code: 400,
    errors.InvalidRequest.code: 400,
    errors.DigestMismatch.code: 400,
    errors.InvalidAdapterUpload.code: 422,
    errors.InvalidCodec.code: 422,
    errors.AdapterTooLarge.code: 413,
    errors.AdapterConflict.code: 409,
    errors.VersionNotReady.code: 409,
    errors.VersionAliased.code: 409,
    errors.SourceMissing.code: 409,
    errors.AuthenticationRequired.code: 401,
    errors.InvalidToken.code: 401,
    errors.PermissionDenied.code: 403,
    errors.StorageError.code: 503,
    errors.SchemaOutdated.code: 503,
    errors.ServiceUnavailable.code: 503,
}


# Problems of HTTP itself (routing, reading the body), by status: code and title.
HTTP_PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("invalid-body", "Invalid body"),  # the only 400 the framework raises: a body it cannot parse
    404: (errors.NotFound.code, "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("request-too-large", "Request too large"),
    416: ("range-not-satisfiable", "Range not satisfiable"),
}


def status_for(exc: errors.RegistryError) -> int:
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in STATUS:
            return STATUS[code]
    return 500


def title_for(cls: type[errors.RegistryError]) -> str:
    """`AdapterNotFound` -> "Adapter not found"."""
    words = re.findall(r"[A-Z][a-z0-9]*", cls.__name__)
    return " ".join([words[0], *(w.lower() for w in words[1:])]) if words else cls.code


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None,
    request: Request,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = Problem(
        type=TYPE_BASE + code if code else "about:blank",
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        code=code or None,
        request_id=request_id_var.get(),
        **extra,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.RegistryError)
    status = status_for(exc)
    headers = None
    if status == 401:
        challenge = 'Bearer error="invalid_token"' if isinstance(exc, errors.InvalidToken) else "Bearer"
        headers = {"WWW-Authenticate": challenge}
    if isinstance(exc, TRANSIENT):
        headers = {"Retry-After": str(request.app.state.adapters.settings.retry_after_seconds)}
    if status >= 500:
        log.error("%s: %s", exc.code, exc)
    return problem(status, exc.code, title_for(type(exc)), str(exc), request, headers=headers)


def registry_error(request: Request, exc: errors.RegistryError) -> JSONResponse:
    """The problem response of a domain error (for routes that add headers of their own to it)."""
    return _registry_error(request, exc)


def _compress_error(request: Request, exc: Exception) -> JSONResponse:
    # The compression library only raises these about input it was handed: an upload or an artifact.
    return problem(422, errors.InvalidAdapterUpload.code, "Invalid adapter upload", str(exc), request)


def _unreadable_body(exc: RequestValidationError) -> str | None:
    """Why the body could not be read as JSON at all, or None when it was and failed validation."""
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            position = list(error.get("loc", ()))[1:2]
            where = f" at character {position[0]}" if position else ""
            return f"the body is not valid JSON: {reason}{where}"
        if tuple(error.get("loc", ())) == ("body",) and isinstance(error.get("input"), bytes):
            return "the body must be JSON, sent with Content-Type: application/json"
    return None


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    unreadable = _unreadable_body(exc)
    if unreadable is not None:
        code, title = HTTP_PROBLEMS[400]
        return problem(400, code, title, unreadable, request)
    fields = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(f['loc'])}: {f['msg']}" for f in fields)
    return problem(422, "validation-error", "Validation error", detail, request, errors=fields)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code, title = HTTP_PROBLEMS.get(exc.status_code, (phrase.lower().replace(" ", "-"), phrase))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    if exc.status_code == 400 and exc.__cause__ is not None:  # the framework's "error parsing the body"
        detail = f"the body cannot be read as JSON: {exc.__cause__}"
    return problem(exc.status_code, code, title, detail, request, headers=getattr(exc, "headers", None))


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """An exception no handler expected (e.g. a database error that escaped the registry's own
    translation, registry.db.connection_errors): 503 if it means the database is gone, else 500."""
    if is_connection_error(exc):
        return _registry_error(request, unavailable(exc))
    return internal_error(request, exc)


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    detail = f"an internal error occurred; quote request id {request_id_var.get()} when reporting it"
    return problem(500, "internal-error", "Internal error", detail, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.RegistryError, _registry_error)
    app.add_exception_handler(CompressError, _compress_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for database_error in (sa.exc.DBAPIError, sa.exc.DisconnectionError, sa.exc.TimeoutError, psycopg.Error):
        app.add_exception_handler(database_error, unexpected_error)
    app.add_exception_handler(Exception, internal_error)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems an operation can answer with."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem_types() -> dict[str, tuple[int, str]]:
    """Every problem type this API can answer with: code -> (status, title)."""
    found = {cls.code: (status_for(cls(cls.code)), title_for(cls)) for cls in errors.error_classes().values()}
    found["validation-error"] = (422, "Validation error")
    for status, (code, title) in HTTP_PROBLEMS.items():
        found.setdefault(code, (status, title))
    found["internal-error"] = (500, "Internal error")
    return found
