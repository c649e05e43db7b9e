"""The webhook operations of `LocalRegistry` (a mixin): subscriptions per namespace, for an admin or
an admin of that namespace; the delivery log; a test ping."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import webhooks
from .webhook_models import Webhook
from .webhook_views import DeliveryView, WebhookView

if TYPE_CHECKING:
    from .db import Database
    from .tokens import Principal


def _view(hook: Webhook, *, secret: bool = False) -> WebhookView:
    return WebhookView(
        id=hook.id,
        namespace=hook.namespace,
        url=hook.url,
        events=list(hook.events),
        created_by=hook.created_by,
        created_at=hook.created_at,
        secret=hook.secret if secret else None,
    )


class WebhookMethods:
    db: Database
    principal: Principal

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    def _hook_admin(self, principal: Principal | None, namespace: str) -> Principal:
        who = principal or self.principal
        who.require("admin", namespace)
        return who

    def create_webhook(
        self,
        url: str,
        namespace: str,
        events: Sequence[str],
        *,
        secret: str | None = None,
        principal: Principal | None = None,
    ) -> WebhookView:
        """Subscribe `url` to `events` of `namespace`; the view carries the secret (shown once)."""
        self._ready()
        who = self._hook_admin(principal, namespace)
        with self.db.transaction() as session:
            hook = webhooks.create(session, namespace, url, events, secret=secret, by=who.name)
            return _view(hook, secret=True)

    def list_webhooks(self, *, principal: Principal | None = None) -> list[WebhookView]:
        """The webhooks the caller administers (all for an admin, a namespace admin's own)."""
        self._ready()
        who = principal or self.principal
        who.require("admin", who.namespace)
        with self.db.reading() as session:
            found = webhooks.list_webhooks(session, None if who.namespace is None else [who.namespace])
            return [_view(h) for h in found]

    def _own(self, session: Any, webhook_id: int, principal: Principal | None) -> Webhook:
        hook = webhooks.get(session, webhook_id)
        self._hook_admin(principal, hook.namespace)
        return hook

    def remove_webhook(self, webhook_id: int, *, principal: Principal | None = None) -> WebhookView:
        self._ready()
        with self.db.transaction() as session:
            view = _view(self._own(session, webhook_id, principal))
            webhooks.remove(session, webhook_id)
            return view

    def webhook_deliveries(
        self, webhook_id: int, *, limit: int = 100, principal: Principal | None = None
    ) -> list[DeliveryView]:
        """The webhook's delivery log, newest first."""
        self._ready()
        with self.db.reading() as session:
            self._own(session, webhook_id, principal)
            return webhooks.deliveries(session, webhook_id, limit=limit)

    def ping_webhook(self, webhook_id: int, *, principal: Principal | None = None) -> DeliveryView:
        """Send a `ping` event now; the logged attempt (a failed one too: it carries the error)."""
        self._ready()
        with self.db.reading() as session:
            self._own(session, webhook_id, principal)
        with contextlib.suppress(webhooks.DeliveryFailed):  # logged, with its error
            webhooks.ping(self.db, webhook_id)
        with self.db.reading() as session:
            return webhooks.deliveries(session, webhook_id, limit=1)[0]
