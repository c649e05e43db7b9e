"""The webhook operations of `RemoteRegistry`, over the API (see api/routes/webhooks.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .webhook_views import DeliveryView, WebhookView


class RemoteWebhookMethods:
    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - RemoteRegistry's

    def create_webhook(
        self, url: str, namespace: str, events: Sequence[str], *, secret: str | None = None
    ) -> WebhookView:
        body = {"url": url, "namespace": namespace, "events": list(events), "secret": secret}
        return WebhookView.model_validate(self._json("POST", "/v1/webhooks", json=body, idempotent=False))

    def list_webhooks(self) -> list[WebhookView]:
        return [WebhookView.model_validate(h) for h in self._json("GET", "/v1/webhooks")["webhooks"]]

    def remove_webhook(self, webhook_id: int) -> WebhookView:
        return WebhookView.model_validate(
            self._json("DELETE", f"/v1/webhooks/{int(webhook_id)}", idempotent=False)
        )

    def ping_webhook(self, webhook_id: int) -> DeliveryView:
        return DeliveryView.model_validate(
            self._json("POST", f"/v1/webhooks/{int(webhook_id)}/test", idempotent=False)
        )

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 100) -> list[DeliveryView]:
        found = self._json("GET", f"/v1/webhooks/{int(webhook_id)}/deliveries", params={"limit": limit})
        return [DeliveryView.model_validate(d) for d in found["deliveries"]]
