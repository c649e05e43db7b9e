"""Compression workers: the live ones, with their devices and the base models they hold."""

from __future__ import annotations

from fastapi import APIRouter

from .. import problems
from ..auth import Reader
from ..schemas import WorkerList
from ..state import State

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get(
    "",
    response_model=WorkerList,
    summary="Live compression workers: device and base models of each",
    responses=problems.responses(401, 403, 422, 503),
)
def list_workers(state: State, principal: Reader) -> WorkerList:
    return WorkerList(workers=state.registry.workers())
