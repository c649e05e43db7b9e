"""Tables of events and webhooks (migration 0009): subscriptions, the event outbox, the delivery log."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base, JSONType, UTCDateTime


class Webhook(Base):
    """A namespace's subscription: events of `events` in `namespace` are POSTed to `url`, signed with
    `secret` (shown once, at creation)."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(sa.String(64), index=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    events: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_by: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=sa.func.now())


class OutboxEvent(Base):
    """An event, written in the transaction of the change it reports: it exists iff the change does."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(36), unique=True)  # receivers dedupe on it
    type: Mapped[str] = mapped_column(sa.String(32))
    namespace: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=sa.func.now())


class Delivery(Base):
    """One attempt to deliver an event to a webhook: the receiver's status code, or the error."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("webhook_events.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.String(500))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=sa.func.now())
