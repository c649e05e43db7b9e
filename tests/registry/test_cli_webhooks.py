"""`adapters webhook ...` against the database: create (the secret printed once), ls, test (a signed
ping reaches the receiver), deliveries, rm; bad input is one line and exit 1."""

from __future__ import annotations

import json

import pytest

from adapters.registry import webhooks
from tests.registry.webhook_receiver import receiver

ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_webhook_commands(cli):
    with receiver(answers=[200, 502]) as hook:
        created = json.loads(
            cli(
                "webhook", "create", hook.url, "-n", "acme", "--events", "version.ready,alias.moved", "--json"
            ).stdout
        )["webhook"]
        assert created["events"] == ["alias.moved", "version.ready"] and len(created["secret"]) >= 32
        human = cli("webhook", "create", hook.url, "-n", "beta", "--events", "alias.deleted").stdout
        assert "secret (shown once):" in human
        listed = json.loads(cli("webhook", "ls", "--json").stdout)["webhooks"]
        assert [(h["namespace"], "secret" in h) for h in listed] == [("acme", False), ("beta", False)]

        webhook_id = created["id"]
        assert "ping" in cli("webhook", "test", webhook_id).stdout
        (ping,) = hook.received
        webhooks.verify_signature(created["secret"], ping.headers, ping.body)
        failed = cli("webhook", "test", webhook_id, code=1)
        assert "answered 502" in failed.stderr
        log = json.loads(cli("webhook", "deliveries", webhook_id, "--json").stdout)["deliveries"]
        assert [(d["type"], d["status_code"]) for d in log] == [("ping", 502), ("ping", 200)]

        assert "removed webhook" in cli("webhook", "rm", webhook_id).stdout
        assert "no webhook" in cli("webhook", "rm", webhook_id, code=1).stderr
        for url in ("file:///etc/passwd", "gopher://x"):
            bad = cli("webhook", "create", url, "-n", "acme", "--events", "version.ready", code=1)
            assert "http" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert (
            "unknown event"
            in cli("webhook", "create", hook.url, "-n", "acme", "--events", "x", code=1).stderr
        )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_webhooks_are_refused_on_sqlite_in_one_line(cli):
    failed = cli(
        "webhook", "create", "http://127.0.0.1:9/h", "-n", "acme", "--events", "version.ready", code=1
    )
    assert "need a PostgreSQL registry" in failed.stderr
    assert "Example" in cli("webhook", "create", "--help").stdout
