"""What the webhook commands show (no database imports: the remote client uses them too)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class WebhookView(BaseModel):
    id: int
    namespace: str
    url: str
    events: list[str]
    created_by: str | None
    created_at: dt.datetime | None
    secret: str | None = Field(default=None, description="Only in the answer that created it")

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if self.secret is None:
            del data["secret"]
        return data


class DeliveryView(BaseModel):
    id: int
    event_id: str = Field(description="The event's id (receivers dedupe on it)")
    type: str
    attempt: int
    status_code: int | None = Field(description="The receiver's answer; none when it was not reached")
    error: str | None
    at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
