"""What an app instance holds: its settings, the registry it serves, and its metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from adapters.registry.client import LocalRegistry
from adapters.registry.settings import Settings


@dataclass
class AppState:
    settings: Settings
    registry: LocalRegistry
    metrics: CollectorRegistry


async def get_state(request: Request) -> AppState:  # async: no thread hop for a lookup
    return request.app.state.adapters


State = Annotated[AppState, Depends(get_state)]
