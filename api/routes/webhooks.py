"""Webhooks of a namespace (admin, or admin of that namespace): subscribe, list, remove, ping, and
the delivery log. PostgreSQL registries only: workers deliver the events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from adapters.registry.webhook_views import DeliveryView, WebhookView

from .. import problems
from ..auth import Admin
from ..state import State

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A webhook's id.")]


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2048, description="http:// or https:// URL the events are POSTed to")
    namespace: str = Field(max_length=64)
    events: list[str] = Field(max_length=16, description="version.ready, alias.moved, ...")
    secret: str | None = Field(default=None, min_length=16, max_length=128, description="Default: generated")


class WebhookList(BaseModel):
    webhooks: list[WebhookView]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


@router.post(
    "",
    response_model=WebhookView,
    status_code=201,
    summary="Subscribe a URL to a namespace's events (the answer carries the secret, once)",
    responses=problems.responses(400, 401, 403, 422, 503),
)
def create_webhook(body: WebhookCreate, state: State, principal: Admin) -> WebhookView:
    return state.registry.create_webhook(
        body.url, body.namespace, body.events, secret=body.secret, principal=principal
    )


@router.get(
    "",
    response_model=WebhookList,
    summary="The webhooks the caller administers",
    responses=problems.responses(401, 403, 422, 503),
)
def list_webhooks(state: State, principal: Admin) -> WebhookList:
    return WebhookList(webhooks=state.registry.list_webhooks(principal=principal))


@router.delete(
    "/{webhook_id}",
    response_model=WebhookView,
    summary="Remove a webhook",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def remove_webhook(webhook_id: WebhookId, state: State, principal: Admin) -> WebhookView:
    return state.registry.remove_webhook(webhook_id, principal=principal)


@router.post(
    "/{webhook_id}/test",
    response_model=DeliveryView,
    summary="Send a ping event now; the logged attempt",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def ping_webhook(webhook_id: WebhookId, state: State, principal: Admin) -> DeliveryView:
    return state.registry.ping_webhook(webhook_id, principal=principal)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="The delivery log, newest first",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def list_deliveries(
    webhook_id: WebhookId,
    state: State,
    principal: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    return DeliveryList(
        deliveries=state.registry.webhook_deliveries(webhook_id, limit=limit, principal=principal)
    )
