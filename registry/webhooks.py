"""Webhooks: per-namespace subscriptions to events (events.py), and their signed, logged delivery.

A delivery POSTs the event's JSON to the subscriber's URL with the headers
`X-Adapters-Event` (type), `X-Adapters-Delivery` (the event id; receivers dedupe on it),
`X-Adapters-Timestamp` (Unix seconds) and `X-Adapters-Signature: sha256=<hex>`, the HMAC-SHA256 of
"<timestamp>.<body>" with the webhook's secret. A receiver checks it with `verify_signature`, which
also refuses timestamps outside its replay window.

Deliveries run as Procrastinate jobs (`deliver_webhook`, queue `events`), deferred in the transaction
that recorded the event; a failed one (not 2xx, timeout, refused) is retried with exponential backoff
by the library's RetryStrategy, and every attempt is written to the delivery log. Outbound requests
have timeouts, follow no redirects and read at most RESPONSE_LIMIT bytes of the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import events
from .db import Database
from .errors import InvalidRequest, WebhookNotFound
from .refs import check_name
from .webhook_models import Delivery, OutboxEvent, Webhook
from .webhook_views import DeliveryView

log = logging.getLogger("adapters.webhooks")

TIMEOUT_SECONDS = 10.0
RESPONSE_LIMIT = 64 * 1024  # bytes of the receiver's answer read (and dropped)
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 2  # retries wait 4, 8, 16 ... seconds
MAX_URL_LENGTH = 2048


class SignatureError(ValueError):
    """A webhook request that does not carry a valid, fresh signature."""


class DeliveryFailed(Exception):
    """The receiver did not take the event (the job retries)."""


# ------------------------------------------------------------------------------------ signatures


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance: float = 300, *, now: float | None = None
) -> None:
    """Check a received webhook request; raise SignatureError if its signature is not the secret's
    over this body and timestamp, or the timestamp is more than `tolerance` seconds off (a replay)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    timestamp, signature = lowered.get("x-adapters-timestamp"), lowered.get("x-adapters-signature")
    if not timestamp or not signature:
        raise SignatureError("missing X-Adapters-Timestamp or X-Adapters-Signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError(f"bad timestamp {timestamp!r}") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise SignatureError(f"timestamp {sent} is outside the {tolerance:g} s window")
    if not hmac.compare_digest(sign(secret, sent, body), signature):
        raise SignatureError("signature does not match")


# --------------------------------------------------------------------------------- subscriptions


def check_url(url: str) -> str:
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"webhook URL longer than {MAX_URL_LENGTH} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook URL must be http:// or https:// with a host, not {url!r}")
    return url


def check_events(names: Sequence[str]) -> list[str]:
    names = sorted({name.strip() for name in names if name.strip()})
    unknown = [name for name in names if name not in events.EVENT_TYPES]
    if not names or unknown:
        given = ", ".join(unknown) or "(none given)"
        raise InvalidRequest(f"unknown event {given}: choose from {', '.join(events.EVENT_TYPES)}")
    return names


def create(
    session: Session,
    namespace: str,
    url: str,
    event_types: Sequence[str],
    *,
    secret: str | None = None,
    by: str | None = None,
) -> Webhook:
    """Subscribe `url` to events of `namespace`; the secret is generated unless given."""
    if session.get_bind().dialect.name != "postgresql":
        raise InvalidRequest("webhooks need a PostgreSQL registry (deliveries are queued jobs)")
    if secret is not None and not 16 <= len(secret) <= 128:
        raise InvalidRequest("a webhook secret has 16 to 128 characters")
    hook = Webhook(
        namespace=check_name(namespace, "namespace"),
        url=check_url(url),
        events=check_events(event_types),
        secret=secret or secrets.token_urlsafe(32),
        created_by=by,
    )
    session.add(hook)
    session.flush()
    return hook


def get(session: Session, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id) if 0 < webhook_id < 2**31 else None  # an INTEGER column
    if hook is None:
        raise WebhookNotFound(f"no webhook {webhook_id}")
    return hook


def list_webhooks(session: Session, namespaces: Sequence[str] | None = None) -> list[Webhook]:
    """Every webhook, or those of `namespaces`."""
    query = sa.select(Webhook).order_by(Webhook.id)
    if namespaces is not None:
        query = query.where(Webhook.namespace.in_(list(namespaces)))
    return list(session.scalars(query))


def remove(session: Session, webhook_id: int) -> None:
    session.delete(get(session, webhook_id))
    session.flush()


def deliveries(session: Session, webhook_id: int, *, limit: int = 100) -> list[DeliveryView]:
    """The webhook's delivery log, newest first."""
    get(session, webhook_id)
    rows = session.execute(
        sa.select(Delivery, OutboxEvent.event_id, OutboxEvent.type)
        .join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
        .where(Delivery.webhook_id == webhook_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    return [
        DeliveryView(
            id=d.id,
            event_id=event_id,
            type=type_,
            attempt=d.attempt,
            status_code=d.status_code,
            error=d.error,
            at=d.at,
        )
        for d, event_id, type_ in rows
    ]


# ---------------------------------------------------------------------------------------- delivery


def post(url: str, headers: Mapping[str, str], body: bytes, *, timeout: float = TIMEOUT_SECONDS) -> int:
    """POST `body`; returns the status code (a redirect is returned, not followed)."""
    parts = urllib.parse.urlsplit(check_url(url))
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)  # type: ignore[arg-type]
    try:
        path = parts.path or "/"
        connection.request(
            "POST", f"{path}?{parts.query}" if parts.query else path, body=body, headers=dict(headers)
        )
        response = connection.getresponse()
        response.read(RESPONSE_LIMIT)
        return response.status
    finally:
        connection.close()


def request_for(
    hook: Webhook, event: OutboxEvent, *, now: float | None = None
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "adapters-webhooks",
        "X-Adapters-Event": event.type,
        "X-Adapters-Delivery": event.event_id,
        "X-Adapters-Timestamp": str(timestamp),
        "X-Adapters-Signature": sign(hook.secret, timestamp, body),
    }
    return headers, body


def deliver(db: Database, event_pk: int, webhook_id: int, *, attempt: int = 1) -> Delivery | None:
    """One attempt to deliver an event to a webhook, logged; raises DeliveryFailed when the receiver
    did not answer 2xx. None when the webhook or event is gone (removed meanwhile)."""
    with db.reading() as session:
        hook, event = session.get(Webhook, webhook_id), session.get(OutboxEvent, event_pk)
        if hook is None or event is None:
            return None
        session.expunge_all()
    headers, body = request_for(hook, event)
    status: int | None = None
    error: str | None = None
    try:
        status = post(hook.url, headers, body)
        if not 200 <= status < 300:
            error = f"receiver answered {status}"
    except (OSError, http.client.HTTPException, InvalidRequest) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    with db.transaction() as session:
        logged = Delivery(
            webhook_id=webhook_id, event_id=event_pk, attempt=attempt, status_code=status, error=error
        )
        session.add(logged)
        session.flush()
        session.expunge(logged)
    log.info("webhook delivery", extra={"webhook": webhook_id, "event": event.event_id, "status": status})
    if error is not None:
        raise DeliveryFailed(error)
    return logged


def ping(db: Database, webhook_id: int) -> Delivery:
    """Send a `ping` event to the webhook now (one attempt, logged); raises DeliveryFailed."""
    with db.transaction() as session:
        hook = get(session, webhook_id)
        event = events.new_event(session, events.PING, hook.namespace, {"webhook": hook.id, "url": hook.url})
        event_pk = event.id
    delivered = deliver(db, event_pk, webhook_id)
    assert delivered is not None
    return delivered


def retry_strategy(*, max_attempts: int = MAX_ATTEMPTS, backoff_base: int = BACKOFF_BASE_SECONDS) -> Any:
    """The library's strategy for `max_attempts` runs in all. Its own `max_attempts` counts retries
    (runs after the first), and 0 would mean no limit: one run is no strategy at all."""
    from procrastinate import RetryStrategy

    if max_attempts <= 1:
        return None
    return RetryStrategy(max_attempts=max_attempts - 1, exponential_wait=backoff_base)


def register(app: Any, db: Database, **retry: int) -> None:
    """Add the delivery task to a Procrastinate app (a worker's)."""

    def deliver_webhook(context: Any, event_id: int, webhook_id: int) -> None:
        deliver(db, event_id, webhook_id, attempt=context.job.attempts + 1)

    app.task(
        name=events.DELIVER_TASK, queue=events.EVENTS_QUEUE, pass_context=True, retry=retry_strategy(**retry)
    )(deliver_webhook)
