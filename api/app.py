"""The FastAPI application: `create_app(settings)` wires the registry the settings describe to the
routes, the auth, the problem handler and the observability middleware.

API processes keep no state of their own beyond a connection pool and the reconstruction cache
(which is only a cache): run as many as the load needs, behind any load balancer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry, disable_created_metrics

from adapters.registry.client import LocalRegistry
from adapters.registry.codecs import import_codec_modules
from adapters.registry.metrics import JobMetrics, RegistryCollector
from adapters.registry.settings import Settings, get_settings
from adapters.registry.sweep import log_sweep

from . import problems
from .observability import Observability
from .routes import (
    adapters,
    aliases,
    downloads,
    hub,
    jobs,
    lifecycle,
    ops,
    recompress,
    tokens,
    versions,
    webhooks,
    workers,
)
from .schemas import Problem, PushMetadata
from .state import AppState

DESCRIPTION = """\
A registry for LoRA adapters: push PEFT adapters, look them up by task, base model and tag, move
aliases, and pull them back as PEFT files (reconstructed from their compressed artifact).

Authenticate with `Authorization: Bearer <token>` (tokens come from `adapters token create`). Scopes:
`read` (list, show, resolve, download), `write` (also upload, aliases, yank), `admin` (also tokens);
a token made for a namespace acts only there. Errors are RFC 9457 problem details
(`application/problem+json`) whose `type` is `https://adapters.dev/problems/<code>`.

The read side of the Hugging Face Hub's API (`/api/models/...`, `/{ns}/{name}/resolve/...`) serves the
same files to `huggingface_hub` and the engines built on it, through `HF_ENDPOINT`.
"""

THREADS = 64  # sync handlers and streamed downloads share anyio's thread pool
log = logging.getLogger("adapters.api")


def _version() -> str:
    try:
        return version("adapters")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


async def _maintain(registry: LocalRegistry, interval: float) -> None:
    """Sweep leftovers of interrupted work now and every `interval` seconds (see registry.sweep)."""
    while True:
        try:
            report = await anyio.to_thread.run_sync(registry.sweep)
        except Exception:  # the blob store may be down for a while; try again next time
            log.exception("sweeping leftovers failed")
        else:
            log_sweep(log, report)
        await anyio.sleep(interval)


def create_app(settings: Settings | None = None, *, registry: LocalRegistry | None = None) -> FastAPI:
    settings = settings or get_settings()
    if registry is None:
        registry = LocalRegistry.from_settings(settings, user="api")
    disable_created_metrics()  # no `_created` twin of every series
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry.db, live_seconds=settings.worker_live_seconds))
    registry.job_metrics = JobMetrics(metrics)  # inline compression reports here

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, THREADS)
        import_codec_modules(settings.codec_modules)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_maintain, registry, settings.maintenance_interval_seconds)
                yield
                tasks.cancel_scope.cancel()
        finally:
            registry.close()

    app = FastAPI(
        title="adapters",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.adapters = AppState(settings=settings, registry=registry, metrics=metrics)
    problems.install(app)
    app.add_middleware(Observability, metrics=metrics)
    # The Hub's routes last: `/{ns}/{name}/resolve/...` must not shadow the registry's own paths.
    for module in (
        adapters,
        versions,
        aliases,
        lifecycle,
        recompress,
        downloads,
        tokens,
        workers,
        jobs,
        webhooks,
        ops,
        hub,
    ):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (Problem, PushMetadata):
                components[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
