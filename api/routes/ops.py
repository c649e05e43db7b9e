"""Operations: liveness, readiness (database and blob store reachable) and Prometheus metrics.
These answer without a token: they say nothing about the adapters."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.registry.errors import RegistryError

from ..schemas import Health, Readiness
from ..state import State

router = APIRouter(tags=["operations"])
log = logging.getLogger("adapters.api")


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database (at the current schema) and the blob store are reachable",
    responses={503: {"description": "Not ready", "model": Readiness}},
)
def readyz(state: State) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        state.registry.check()
        checks = {"database": "ok", "storage": "ok"}
    except RegistryError as exc:
        checks["error"] = f"{exc.code}: {exc}"
    except Exception as exc:  # e.g. the database refuses connections: not ready, not a server error
        log.warning("not ready", exc_info=True)
        checks["error"] = f"{type(exc).__name__}"
    ready = "error" not in checks
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)
