"""Pruning the event outbox and the delivery log on PostgreSQL: old delivered and dead events go with
their log, recent ones stay, and an event whose delivery is still waiting is never pruned."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from adapters.registry import events, webhooks
from adapters.registry.event_pruning import prune_events
from adapters.registry.settings import get_settings
from adapters.registry.webhook_models import Delivery, OutboxEvent
from adapters.registry.worker import Worker
from tests.registry.webhook_receiver import receiver

ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
SECRET = "s3cret-for-the-tests-0123456789"
DAY = 24 * 3600.0
DEFAULTS = {"event_retention_seconds": 7 * DAY, "delivery_retention_seconds": 30 * DAY}


def _worker(registry, **settings) -> Worker:
    update = {"worker_poll_seconds": 0.05, "device": "cpu", "worker_backoff_seconds": 0}
    update |= {"webhook_backoff_seconds": 0} | settings
    return Worker(get_settings().model_copy(update=update), registry=registry)


def _event(registry, webhook_id: int, note: str) -> int:
    """An event deferred for delivery to the webhook, in its own committed transaction."""
    with registry.db.transaction() as session:
        event = events.new_event(session, events.VERSION_READY, "acme", {"note": note})
        events.defer_delivery(session, event.id, webhook_id)
        return event.id


def _age(registry, event_id: int, days: float) -> None:
    """Make an event and its delivery-log rows `days` old."""
    with registry.db.transaction() as session:
        past = sa.func.now() - sa.text(f"interval '{days * 24} hours'")
        session.execute(sa.update(OutboxEvent).where(OutboxEvent.id == event_id).values(created_at=past))
        session.execute(sa.update(Delivery).where(Delivery.event_id == event_id).values(at=past))


def _left(registry) -> tuple[set[int], dict[int, int]]:
    with registry.db.reading() as session:
        kept = set(session.scalars(sa.select(OutboxEvent.id)))
        logged = dict(
            session.execute(sa.select(Delivery.event_id, sa.func.count()).group_by(Delivery.event_id)).all()
        )
    return kept, logged


@ON_POSTGRESQL
def test_old_settled_events_and_log_rows_go_recent_and_pending_ones_stay(registry):
    with receiver(answers=[200, 200, 500]) as hook:
        with registry.db.transaction() as session:
            webhook_id = webhooks.create(session, "acme", hook.url, [events.VERSION_READY], secret=SECRET).id
        delivered_long_ago = _event(registry, webhook_id, "a")
        delivered_recently = _event(registry, webhook_id, "b")
        dead_long_ago = _event(registry, webhook_id, "c")  # the receiver answers 500, no retry
        _worker(registry, webhook_max_attempts=1, worker_compress=False).run(once=True)
        assert len(hook.received) == 3
        waiting = _event(registry, webhook_id, "d")  # no worker runs: its delivery is still to do
        for event_id in (delivered_long_ago, dead_long_ago, waiting):
            _age(registry, event_id, days=40)
        _age(registry, delivered_recently, days=10)  # past the event retention, not the log's

        assert prune_events(registry.db, **DEFAULTS).to_json() == {"events": 2, "deliveries": 2}

    kept, logged = _left(registry)
    assert kept == {delivered_recently, waiting}
    assert logged == {delivered_recently: 1}
    assert prune_events(registry.db, **DEFAULTS).to_json() == {"events": 0, "deliveries": 0}
    # Past every retention, the waiting event is still kept: its delivery has not run yet.
    prune_events(registry.db, event_retention_seconds=0, delivery_retention_seconds=0)
    assert _left(registry) == ({waiting}, {})


@ON_POSTGRESQL
def test_an_event_without_deliveries_goes_after_the_event_retention(registry):
    with registry.db.transaction() as session:
        webhook_id = webhooks.create(session, "acme", "http://127.0.0.1:9/hook", ["version.ready"]).id
    old, recent = _event(registry, webhook_id, "old"), _event(registry, webhook_id, "recent")
    with registry.db.transaction() as session:
        webhooks.remove(session, webhook_id)  # its deliveries run, find no webhook and log nothing
    _worker(registry, worker_compress=False).run(once=True)
    _age(registry, old, days=8)
    _age(registry, recent, days=6)
    assert prune_events(registry.db, **DEFAULTS).to_json() == {"events": 1, "deliveries": 0}
    assert _left(registry) == ({recent}, {})


@ON_POSTGRESQL
def test_adapters_maintenance_prunes_by_the_settings(registry, cli, cli_env):
    with registry.db.transaction() as session:
        webhook_id = webhooks.create(session, "acme", "http://127.0.0.1:9/hook", ["version.ready"]).id
    event_id = _event(registry, webhook_id, "x")
    with registry.db.transaction() as session:
        webhooks.remove(session, webhook_id)
    _worker(registry, worker_compress=False).run(once=True)
    _age(registry, event_id, days=2)

    report = json.loads(cli("maintenance", "--json").stdout)
    assert report["pruned"] == {"events": 0, "deliveries": 0}  # within the default 7 days
    cli_env.setenv("ADAPTERS_WEBHOOK_EVENT_RETENTION_SECONDS", str(DAY))
    report = json.loads(cli("maintenance", "--json").stdout)
    assert report["pruned"] == {"events": 1, "deliveries": 0} and report["errors"] == []
    assert _left(registry) == (set(), {})
    assert "0 events and 0 delivery-log rows pruned" in cli("maintenance").stdout
