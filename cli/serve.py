"""adapters serve: the registry's HTTP API."""

from __future__ import annotations

import click

from .context import AppContext, pass_app


@click.command()
@click.option("--host", help="Address to listen on (default: ADAPTERS_API_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: ADAPTERS_API_PORT, 8080).")
@pass_app
def serve(app: AppContext, host: str | None, port: int | None) -> None:
    """Serve the registry's REST API (OpenAPI at /docs and /openapi.json) on the database and blob
    store the settings name. Refuses to start with placeholder secrets.

    \b
    Example:
      ADAPTERS_DATABASE_URL=postgresql://registry@db/registry adapters serve --host 0.0.0.0
    """
    import uvicorn

    from adapters.api.app import create_app

    settings = app.settings
    app.start_service()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,  # the app logs each request itself, with its request id
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )
