"""adapters maintenance: sweep leftovers of interrupted work and prune the event outbox, once."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    help="Seconds since a leftover last changed (default: ADAPTERS_SWEEP_AFTER_SECONDS, a day).",
)
@json_option
@pass_app
def maintenance(app: AppContext, older_than: float | None) -> None:
    """Remove what killed pushes, codec runs, uploads and pulls left behind: temporary folders under
    ADAPTERS_TMP_DIR, staging folders of the reconstruction cache, partial files in a blob folder and
    incomplete S3 multipart uploads, once they are older than the threshold (temporary folders of
    processes still running on this machine are kept). On PostgreSQL it also prunes webhook
    delivery-log rows older than ADAPTERS_WEBHOOK_DELIVERY_RETENTION_SECONDS (30 days) and outbox events
    older than ADAPTERS_WEBHOOK_EVENT_RETENTION_SECONDS (7 days) whose deliveries are settled (an event
    still being retried is kept). Workers do all of this every ADAPTERS_MAINTENANCE_INTERVAL_SECONDS
    (the API server sweeps); this runs it once, e.g. from cron.

    \b
    Example:
      adapters maintenance --older-than 3600 --json
    """
    from adapters.registry.client import LocalRegistry
    from adapters.registry.event_pruning import prune_events

    app.require_local("adapters maintenance")
    registry = app.registry
    assert isinstance(registry, LocalRegistry)
    report = registry.sweep(older_than)
    settings = app.settings
    pruned = prune_events(
        registry.db,
        event_retention_seconds=settings.webhook_event_retention_seconds,
        delivery_retention_seconds=settings.webhook_delivery_retention_seconds,
    )

    def human() -> None:
        for removed in report.removed:
            click.echo(f"removed {removed}")
        click.echo(f"{len(report.removed)} leftovers removed")
        if registry.db.dialect == "postgresql":  # SQLite registries have no events
            click.echo(f"{pruned.events} events and {pruned.deliveries} delivery-log rows pruned")

    app.emit(report.to_json() | {"pruned": pruned.to_json()}, human)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise click.ClickException(f"could not sweep {report.errors[0]}{more}")
