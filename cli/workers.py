"""adapters workers: the live compression workers, their devices and the base models they hold."""

from __future__ import annotations

import click

from .context import AppContext, echo_table, json_option, pass_app


@click.command()
@json_option
@pass_app
def workers(app: AppContext) -> None:
    """List the live compression workers: host, device, and the base models each can load. A version
    whose base model a live worker holds is compressed only by such a worker.

    \b
    Example:
      adapters workers --json
    """
    found = app.registry.workers()

    def human() -> None:
        if not found:
            click.echo("no live workers", err=True)
            return
        echo_table(
            ["WORKER", "HOST", "DEVICE", "BASE MODELS", "STARTED", "LAST SEEN"],
            [
                (
                    w.id,
                    w.host,
                    w.device,
                    ",".join(w.base_models),
                    f"{w.started_at:%Y-%m-%d %H:%M:%S}",
                    f"{w.last_seen:%H:%M:%S}",
                )
                for w in found
            ],
        )

    app.emit({"workers": [w.to_json() for w in found]}, human)
