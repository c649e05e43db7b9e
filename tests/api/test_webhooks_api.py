"""Webhooks over the API: admins and the namespace's admins manage its webhooks, nobody else; the
test endpoint sends a signed ping; errors are problem+json."""

from __future__ import annotations

import pytest

from adapters.registry import webhooks
from adapters.registry.errors import NotFound, PermissionDenied
from tests.registry.webhook_receiver import receiver


def _problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_scopes_ping_and_problems(service):
    acme_admin = service.client(service.token("admin", namespace="acme"))
    with receiver() as hook:
        created = acme_admin.create_webhook(hook.url, "acme", ["version.ready"])
        assert created.secret and created.created_by == "token:test"
        other = service.client().create_webhook(hook.url, "beta", ["alias.moved"])
        assert other.secret
        # A namespace's admin sees and manages its own webhooks only; writers and readers none.
        assert [h.id for h in acme_admin.list_webhooks()] == [created.id]
        assert {h.id for h in service.client().list_webhooks()} >= {created.id, other.id}
        with pytest.raises(PermissionDenied):
            acme_admin.create_webhook(hook.url, "beta", ["version.ready"])
        with pytest.raises(PermissionDenied):
            acme_admin.remove_webhook(other.id)
        for token in (service.token("write", namespace="acme"), service.token("read")):
            with pytest.raises(PermissionDenied):
                service.client(token).create_webhook(hook.url, "acme", ["version.ready"])
            with pytest.raises(PermissionDenied):
                service.client(token).webhook_deliveries(created.id)

        delivery = acme_admin.ping_webhook(created.id)
        assert (delivery.type, delivery.status_code, delivery.attempt) == ("ping", 200, 1)
        (ping,) = hook.received
        webhooks.verify_signature(created.secret, ping.headers, ping.body)
        assert [d.id for d in acme_admin.webhook_deliveries(created.id)] == [delivery.id]

        with service.http(service.admin) as http:
            bad = {"url": "file:///etc/passwd", "namespace": "acme", "events": ["version.ready"]}
            _problem(http.post("/v1/webhooks", json=bad), 400, "invalid-request")
            unknown = {"url": hook.url, "namespace": "acme", "events": ["nope"]}
            _problem(http.post("/v1/webhooks", json=unknown), 400, "invalid-request")
            _problem(http.post("/v1/webhooks/0/test"), 422, "validation-error")
            _problem(http.delete("/v1/webhooks/999999999"), 404, "webhook-not-found")
        acme_admin.remove_webhook(created.id)
        with pytest.raises(NotFound):
            acme_admin.remove_webhook(created.id)
        service.client().remove_webhook(other.id)
