"""Events: what changed in the registry, written to an outbox in the transaction of the change.

An event row exists iff its change committed (no event is lost, none reports a rolled-back change),
and the same transaction defers one delivery job per subscribed webhook (webhooks.py runs them, on
the `events` queue), so delivery is at least once. Webhooks need PostgreSQL: the embedded SQLite
registry has no queue to deliver from, so creating one there is refused and no event is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import Adapter, Version
from .webhook_models import OutboxEvent, Webhook

log = logging.getLogger("adapters.events")

VERSION_READY = "version.ready"
VERSION_FAILED = "version.failed"
VERSION_REJECTED = "version.rejected"
VERSION_YANKED = "version.yanked"
VERSION_RECOMPRESSED = "version.recompressed"  # re-encoded from its source (recompress.py)
ALIAS_MOVED = "alias.moved"  # created or moved
ALIAS_DELETED = "alias.deleted"
PING = "ping"  # sent by `adapters webhook test` only
EVENT_TYPES = (
    VERSION_READY,
    VERSION_FAILED,
    VERSION_REJECTED,
    VERSION_YANKED,
    VERSION_RECOMPRESSED,
    ALIAS_MOVED,
    ALIAS_DELETED,
)
STATUS_EVENTS = {"ready": VERSION_READY, "failed": VERSION_FAILED, "rejected": VERSION_REJECTED}

DELIVER_TASK = "deliver_webhook"
EVENTS_QUEUE = "events"


def payload(event_id: str, type_: str, namespace: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": type_,
        "namespace": namespace,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "data": data,
    }


def new_event(session: Session, type_: str, namespace: str, data: dict[str, Any]) -> OutboxEvent:
    event_id = str(uuid.uuid4())
    event = OutboxEvent(
        event_id=event_id, type=type_, namespace=namespace, payload=payload(event_id, type_, namespace, data)
    )
    session.add(event)
    session.flush()
    return event


def emit(session: Session, type_: str, namespace: str, data: dict[str, Any]) -> OutboxEvent | None:
    """Record an event in the session's transaction, with a delivery job per webhook that wants it.
    Nothing is written when none does (always on SQLite, which has no webhooks): the outbox holds
    what is to be delivered, it is not an audit log."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    hooks = session.scalars(sa.select(Webhook).where(Webhook.namespace == namespace).order_by(Webhook.id))
    wanting = [hook.id for hook in hooks if type_ in hook.events]
    if not wanting:
        return None
    event = new_event(session, type_, namespace, data)
    for webhook_id in wanting:
        defer_delivery(session, event.id, webhook_id)
    return event


def defer_delivery(session: Session, event_pk: int, webhook_id: int) -> int:
    """Defer the delivery job of one (event, webhook) on the session's connection: it exists iff the
    transaction commits."""
    from procrastinate import jobs as pjobs
    from procrastinate import manager, sync_psycopg_connector

    job = pjobs.Job(
        id=None,
        queue=EVENTS_QUEUE,
        priority=0,
        lock=None,
        queueing_lock=None,
        task_name=DELIVER_TASK,
        task_kwargs={"event_id": event_pk, "webhook_id": webhook_id},
    )
    connection = session.connection().connection.driver_connection
    jobs = manager.JobManager(sync_psycopg_connector.SyncPsycopgConnector())
    deferred = jobs.defer_job(job, connection=connection)
    assert deferred.id is not None
    return deferred.id


def _version_data(version: Version) -> dict[str, Any]:
    return {
        "ref": version.ref,
        "adapter": version.adapter.full_name,
        "version": version.number,
        "status": version.status,
        "artifact_digest": version.artifact_digest,
        "error": version.error,
    }


def version_status(session: Session, version: Version) -> None:
    """Report a version that became ready, failed or rejected."""
    type_ = STATUS_EVENTS.get(version.status)
    if type_ is not None:
        emit(session, type_, version.adapter.namespace, _version_data(version))


def version_failed(session: Session, version_id: int) -> None:
    """Report a version a bulk UPDATE marked failed."""
    version = session.get(Version, version_id, populate_existing=True)
    if version is not None:
        version_status(session, version)


def version_yanked(session: Session, version: Version) -> None:
    data = _version_data(version) | {"reason": version.yank_reason}
    emit(session, VERSION_YANKED, version.adapter.namespace, data)


def version_recompressed(
    session: Session, version: Version, *, from_codec: str | None, from_artifact_digest: str | None
) -> None:
    """Report a version whose artifact was re-encoded: same version, new codec and artifact."""
    data = _version_data(version) | {
        "codec": version.codec,
        "from_codec": from_codec,
        "from_artifact_digest": from_artifact_digest,
    }
    emit(session, VERSION_RECOMPRESSED, version.adapter.namespace, data)


def alias_changed(
    session: Session,
    adapter: Adapter,
    alias: str,
    *,
    from_number: int | None,
    to_number: int | None,
    actor: str | None,
) -> None:
    """Report an alias created, moved (`alias.moved`) or removed (`alias.deleted`)."""
    data = {
        "adapter": adapter.full_name,
        "alias": alias,
        "from_version": from_number,
        "to_version": to_number,
        "ref": f"{adapter.full_name}:{to_number}" if to_number is not None else None,
        "actor": actor,
    }
    emit(session, ALIAS_MOVED if to_number is not None else ALIAS_DELETED, adapter.namespace, data)
