"""What the job queue shows of a job (no database imports: the remote client uses it too)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class JobView(BaseModel):
    """A queue job as `adapters jobs ls` and GET /v1/jobs show it."""

    id: int
    queue: str
    task: str
    status: str = Field(description="todo, doing, succeeded, failed, cancelled, aborting or aborted")
    priority: int
    attempts: int = Field(description="Runs the queue started (the version counts its own attempts)")
    version: str | None = Field(description="The ref of the version it compresses")
    version_status: str | None
    scheduled_at: dt.datetime | None = Field(description="Not before (a retry's backoff)")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
