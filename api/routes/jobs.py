"""The compression job queue (admin scope, across namespaces): list jobs, retry a failed one, cancel a
waiting one. PostgreSQL registries only: the embedded one compresses inline."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from adapters.registry.jobs import JobView

from .. import problems
from ..auth import Admin
from ..state import State

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[int, Path(ge=1, description="A job's id.")]
JobState = Literal["todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted"]


class JobList(BaseModel):
    jobs: list[JobView]


@router.get(
    "",
    response_model=JobList,
    summary="Queue jobs, newest first",
    responses=problems.responses(400, 401, 403, 422, 503),
)
def list_jobs(
    state: State,
    principal: Admin,
    queue: Annotated[str | None, Query(max_length=128, description="Only this queue.")] = None,
    status: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    return JobList(
        jobs=state.registry.list_jobs(queue=queue, status=status, limit=limit, principal=principal)
    )


@router.post(
    "/{job_id}/retry",
    response_model=JobView,
    summary="Run a failed or cancelled job again (its version pending again)",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def retry_job(job_id: JobId, state: State, principal: Admin) -> JobView:
    return state.registry.retry_job(job_id, principal=principal)


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel a waiting job (its version fails with the reason)",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def cancel_job(job_id: JobId, state: State, principal: Admin) -> JobView:
    return state.registry.cancel_job(job_id, principal=principal)
