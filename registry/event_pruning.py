"""Pruning the event outbox and the webhook delivery log, so neither grows without bound.

- A delivery-log row older than `delivery_retention_seconds` is deleted.
- An outbox event older than `event_retention_seconds` is deleted once it is settled: no delivery
  job of it is waiting or running (`todo`, `doing`, `aborting`), so an event whose delivery is still
  being retried is never touched, however old. Delivered events and dead ones (their jobs failed
  for good, or were cancelled) go.
- The delivery log names its event (id and type), and deleting an event deletes its log rows (the
  foreign key cascades): a settled event is therefore kept as long as it still has log rows, and goes
  with the last of them. With the defaults (events 7 days, log 30 days) a delivered event lives 30
  days; one that never had a delivery (its webhook removed first) 7.

Runs where the other periodic maintenance runs: every `maintenance_interval_seconds` in each worker,
and once per `adapters maintenance`. SQLite registries have no events (events.py): nothing to do.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from .db import Database
from .events import DELIVER_TASK

log = logging.getLogger("adapters.events")

PENDING_JOB_STATES = ("todo", "doing", "aborting")

_OLD_DELIVERIES = sa.text("DELETE FROM webhook_deliveries WHERE at < :cutoff")
_SETTLED_OLD_EVENTS = sa.text(
    """
    DELETE FROM webhook_events e
     WHERE e.created_at < :cutoff
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
       AND NOT EXISTS (
           SELECT 1 FROM procrastinate_jobs j
            WHERE j.task_name = :task AND j.status::text = ANY(:pending)
              AND (j.args->>'event_id')::bigint = e.id)
    """
)


@dataclass
class PruneReport:
    events: int = 0  # outbox rows deleted
    deliveries: int = 0  # delivery-log rows deleted

    def to_json(self) -> dict[str, int]:
        return {"events": self.events, "deliveries": self.deliveries}


def prune_events(
    db: Database, *, event_retention_seconds: float, delivery_retention_seconds: float
) -> PruneReport:
    """Delete delivery-log rows and settled outbox events past their retention (module docstring)."""
    if event_retention_seconds < 0 or delivery_retention_seconds < 0:
        raise ValueError("a retention cannot be negative")
    report = PruneReport()
    if db.dialect != "postgresql":
        return report
    with db.transaction() as session:
        now = session.scalar(sa.select(sa.func.now()))
        report.deliveries = session.execute(
            _OLD_DELIVERIES, {"cutoff": now - dt.timedelta(seconds=delivery_retention_seconds)}
        ).rowcount
        report.events = session.execute(
            _SETTLED_OLD_EVENTS,
            {
                "cutoff": now - dt.timedelta(seconds=event_retention_seconds),
                "task": DELIVER_TASK,
                "pending": list(PENDING_JOB_STATES),
            },
        ).rowcount
    if report.events or report.deliveries:
        log.info("pruned %d events and %d delivery-log rows", report.events, report.deliveries)
    return report
