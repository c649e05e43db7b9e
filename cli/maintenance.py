"""adapters maintenance: sweep leftovers of interrupted work once."""

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
    processes still running on this machine are kept). The API server and workers do this every
    ADAPTERS_MAINTENANCE_INTERVAL_SECONDS; this runs it once, e.g. from cron.

    \b
    Example:
      adapters maintenance --older-than 3600 --json
    """
    from adapters.registry.client import LocalRegistry

    app.require_local("adapters maintenance")
    registry = app.registry
    assert isinstance(registry, LocalRegistry)
    report = registry.sweep(older_than)

    def human() -> None:
        for removed in report.removed:
            click.echo(f"removed {removed}")
        click.echo(f"{len(report.removed)} leftovers removed")

    app.emit(report, human)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise click.ClickException(f"could not sweep {report.errors[0]}{more}")
