"""Events and webhooks on PostgreSQL: a receiver on loopback gets signed events for a push that
becomes ready, an alias move and a yank; a failing receiver is retried and the log shows every
attempt; events of a rolled-back change are never written; signatures are checked."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from adapters.registry import events, service, webhooks
from adapters.registry.client import LocalRegistry
from adapters.registry.errors import InvalidRequest, WebhookNotFound
from adapters.registry.settings import get_settings
from adapters.registry.webhook_models import OutboxEvent
from adapters.registry.worker import Worker
from tests.registry.webhook_receiver import receiver
from tests.worker import slow_codec  # noqa: F401 - registers the test codecs

ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
SECRET = "s3cret-for-the-tests-0123456789"


def _worker(registry: LocalRegistry, **settings) -> Worker:
    update = {"worker_poll_seconds": 0.05, "device": "cpu", "worker_backoff_seconds": 0}
    update |= {"webhook_backoff_seconds": 0} | settings
    return Worker(get_settings().model_copy(update=update), registry=registry)


def _subscribe(registry: LocalRegistry, url: str, types: list[str], namespace: str = "acme") -> int:
    with registry.db.transaction() as session:
        return webhooks.create(session, namespace, url, types, secret=SECRET).id


def _log(registry: LocalRegistry, webhook_id: int) -> list[tuple[str, int, int | None]]:
    with registry.db.reading() as session:
        return [
            (d.type, d.attempt, d.status_code) for d in reversed(webhooks.deliveries(session, webhook_id))
        ]


@ON_POSTGRESQL
def test_a_receiver_gets_signed_events_for_ready_alias_move_and_yank(registry, adapter_dir):
    with receiver() as hook, receiver() as other:
        webhook_id = _subscribe(
            registry, hook.url, [events.VERSION_READY, events.ALIAS_MOVED, events.VERSION_YANKED]
        )
        _subscribe(registry, other.url, list(events.EVENT_TYPES), namespace="elsewhere")
        registry.push(adapter_dir, "acme/h", task="t", process=False)
        _worker(registry).run(once=True)
        registry.set_alias("acme/h:1", "prod")
        registry.remove_alias("acme/h", "prod")  # alias.deleted: not subscribed
        registry.yank("acme/h:1", "bad data")
        _worker(registry).run(once=True)

        got = [r.event for r in hook.received]
        assert [e["type"] for e in got] == ["version.ready", "alias.moved", "version.yanked"]
        for received in hook.received:
            webhooks.verify_signature(SECRET, received.headers, received.body)
            assert received.headers["X-Adapters-Event"] == received.event["type"]
            assert received.headers["X-Adapters-Delivery"] == received.event["id"]
        assert len({e["id"] for e in got}) == 3
        assert got[0]["data"]["ref"] == "acme/h:1" and got[0]["data"]["artifact_digest"]
        assert (got[1]["data"]["alias"], got[1]["data"]["from_version"], got[1]["data"]["to_version"]) == (
            "prod",
            None,
            1,
        )
        assert got[2]["data"]["reason"] == "bad data"
        assert other.received == []  # another namespace's webhook hears nothing
        assert _log(registry, webhook_id) == [
            ("version.ready", 1, 200),
            ("alias.moved", 1, 200),
            ("version.yanked", 1, 200),
        ]


@ON_POSTGRESQL
def test_a_compression_worker_and_an_events_worker_share_the_work(registry, adapter_dir):
    with receiver() as hook:
        webhook_id = _subscribe(registry, hook.url, [events.VERSION_READY])
        registry.push(adapter_dir, "acme/two", task="t", process=False)
        assert _worker(registry, worker_compress=False).run(once=True) == 0  # nothing of its queue yet
        assert registry.resolve("acme/two:1").status == "pending"
        assert _worker(registry, worker_deliver_events=False).run(once=True) == 1
        assert hook.received == []  # the compression worker leaves the event to the other
        _worker(registry, worker_compress=False).run(once=True)
        assert [r.event["type"] for r in hook.received] == ["version.ready"]
        assert _log(registry, webhook_id) == [("version.ready", 1, 200)]


@ON_POSTGRESQL
def test_a_version_that_fails_for_good_is_reported_once(registry, adapter_dir, tmp_path):
    with receiver() as hook:
        _subscribe(registry, hook.url, [events.VERSION_FAILED, events.VERSION_READY])
        params = {"log": str(tmp_path / "runs.log"), "fail": "GPU gone"}
        registry.push(adapter_dir, "acme/x", task="t", process=False, codec="test-slow", params=params)
        _worker(registry, worker_max_attempts=2).run(once=True)
        (failed,) = [r.event for r in hook.received]  # not one per attempt: when it gave up
        assert failed["type"] == "version.failed" and failed["data"]["ref"] == "acme/x:1"
        assert "gave up after 2 attempts" in failed["data"]["error"]


@ON_POSTGRESQL
def test_a_failing_receiver_is_retried_and_the_log_shows_the_attempts(registry, adapter_dir):
    with receiver(answers=[500, 503]) as hook:
        webhook_id = _subscribe(registry, hook.url, [events.VERSION_READY])
        registry.push(adapter_dir, "acme/r", task="t", process=False)
        _worker(registry).run(once=True)
        assert _log(registry, webhook_id) == [
            ("version.ready", 1, 500),
            ("version.ready", 2, 503),
            ("version.ready", 3, 200),
        ]
        # The same event each time: one id for the receiver to dedupe on, freshly signed.
        assert len({r.headers["X-Adapters-Delivery"] for r in hook.received}) == 1
        for received in hook.received:
            webhooks.verify_signature(SECRET, received.headers, received.body)


@ON_POSTGRESQL
def test_deliveries_stop_after_the_attempts_and_the_job_fails(registry, adapter_dir):
    with receiver(answers=[500] * 10) as hook:
        webhook_id = _subscribe(registry, hook.url, [events.VERSION_READY])
        registry.push(adapter_dir, "acme/f", task="t", process=False)
        _worker(registry, webhook_max_attempts=2).run(once=True)
        assert _log(registry, webhook_id) == [("version.ready", 1, 500), ("version.ready", 2, 500)]
        with registry.db.reading() as session:
            status = session.scalar(
                sa.text("SELECT status::text FROM procrastinate_jobs WHERE task_name = :t"),
                {"t": events.DELIVER_TASK},
            )
        assert status == "failed"


@ON_POSTGRESQL
def test_an_unreachable_receiver_is_logged_with_its_error(registry):
    with receiver() as hook:
        url = hook.url
    webhook_id = _subscribe(registry, url, [events.VERSION_READY])  # its server is gone
    with pytest.raises(webhooks.DeliveryFailed):
        webhooks.ping(registry.db, webhook_id)
    with registry.db.reading() as session:
        (logged,) = webhooks.deliveries(session, webhook_id)
    assert (logged.type, logged.status_code) == ("ping", None)
    assert "ConnectionRefused" in logged.error


@ON_POSTGRESQL
def test_a_rolled_back_change_writes_no_event_and_defers_no_delivery(registry, adapter_dir):
    registry.push(adapter_dir, "acme/b", task="t")
    with receiver() as hook:
        _subscribe(registry, hook.url, [events.VERSION_YANKED])
        with registry.db.reading() as session:
            before = session.scalar(sa.text("SELECT count(*) FROM procrastinate_jobs"))
        with pytest.raises(RuntimeError), registry.db.transaction() as session:
            service.yank(session, "acme/b:1", "oops")
            assert (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.type == events.VERSION_YANKED)
                )
                == 1
            )
            raise RuntimeError("the change fails after the event was written")
        with registry.db.reading() as session:
            assert session.scalar(sa.text("SELECT count(*) FROM procrastinate_jobs")) == before
            assert (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.type == events.VERSION_YANKED)
                )
                == 0
            )


@ON_POSTGRESQL
def test_ping_and_subscription_checks(registry):
    with receiver() as hook:
        webhook_id = _subscribe(registry, hook.url, [events.ALIAS_MOVED])
        delivered = webhooks.ping(registry.db, webhook_id)
        assert delivered.status_code == 200
        (ping,) = hook.received
        webhooks.verify_signature(SECRET, ping.headers, ping.body)
        assert ping.event["type"] == "ping" and ping.event["data"]["webhook"] == webhook_id
        # A redirect is a failed delivery, not followed (the receiver sees one request).
        hook.answers.append(302)
        with pytest.raises(webhooks.DeliveryFailed, match="302"):
            webhooks.ping(registry.db, webhook_id)
        assert len(hook.received) == 2
    with registry.db.transaction() as session:
        for url in ("file:///etc/passwd", "ftp://host/x", "http://"):
            with pytest.raises(InvalidRequest, match="http"):
                webhooks.create(session, "acme", url, [events.ALIAS_MOVED])
        with pytest.raises(InvalidRequest, match="unknown event"):
            webhooks.create(session, "acme", hook.url, ["version.exploded"])
        webhooks.remove(session, webhook_id)
        with pytest.raises(WebhookNotFound):
            webhooks.remove(session, webhook_id)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_webhooks_need_postgresql(registry):
    with registry.db.transaction() as session, pytest.raises(InvalidRequest, match="PostgreSQL"):
        webhooks.create(session, "acme", "http://127.0.0.1:9/hook", [events.VERSION_READY])


def test_verify_signature_rejects_tampering_other_secrets_and_replays():
    body = json.dumps({"id": "e1", "type": "version.ready"}).encode()
    now = int(time.time())
    headers = {"X-Adapters-Timestamp": str(now), "X-Adapters-Signature": webhooks.sign(SECRET, now, body)}
    webhooks.verify_signature(SECRET, headers, body)
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify_signature(SECRET, headers, body + b" ")
    with pytest.raises(webhooks.SignatureError, match="does not match"):
        webhooks.verify_signature("another-secret-0123456789", headers, body)
    old = now - 301
    replayed = {"X-Adapters-Timestamp": str(old), "X-Adapters-Signature": webhooks.sign(SECRET, old, body)}
    with pytest.raises(webhooks.SignatureError, match="window"):
        webhooks.verify_signature(SECRET, replayed, body)
    webhooks.verify_signature(SECRET, replayed, body, tolerance=600)
    with pytest.raises(webhooks.SignatureError, match="missing"):
        webhooks.verify_signature(SECRET, {}, body)
