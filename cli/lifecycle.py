"""adapters rm | retain | gc: delete versions and adapters, keep the newest N, collect blobs."""

from __future__ import annotations

import click

from .context import AppContext, human_size, json_option, pass_app


@click.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Delete even what an alias points to (the alias goes too).")
@json_option
@pass_app
def rm(app: AppContext, ref: str, force: bool) -> None:
    """Delete the version REF names (ns/name:N, ns/name@alias), or with ns/name the whole adapter.

    An admin's act. A version an alias points to (or an adapter with aliases) is refused unless
    --force. The blobs stay until `adapters gc` runs after the grace period.

    \b
    Examples:
      adapters rm acme/support-en:3
      adapters rm acme/support-en --force
    """
    deleted = app.registry.delete(ref, force=force, actor=app.user)  # type: ignore[attr-defined]

    def human() -> None:
        what = f"{deleted.adapter}" if deleted.adapter_deleted else f"{deleted.adapter}:{deleted.versions[0]}"
        also = f" and alias {', '.join(deleted.aliases)}" if deleted.aliases else ""
        count = f" ({len(deleted.versions)} versions)" if deleted.adapter_deleted else ""
        click.echo(f"deleted {what}{count}{also}")

    app.emit(deleted, human)


@click.command()
@click.argument("adapter")
@click.option("--keep", type=click.IntRange(min=1), help="Keep the newest N versions.")
@click.option("--save", is_flag=True, help="Also keep N after every future push (the adapter's setting).")
@click.option("--off", is_flag=True, help="Stop applying retention after pushes.")
@json_option
@pass_app
def retain(app: AppContext, adapter: str, keep: int | None, save: bool, off: bool) -> None:
    """Delete ADAPTER's versions older than its newest N, never one an alias points to (nor one still
    queued for compression). Without --keep, applies the saved setting. An admin's act.

    \b
    Examples:
      adapters retain acme/support-en --keep 5
      adapters retain acme/support-en --keep 5 --save
      adapters retain acme/support-en --off
    """
    registry = app.registry
    if off:
        if keep is not None or save:
            raise click.UsageError("--off takes neither --keep nor --save")
        result = registry.clear_retention(adapter)  # type: ignore[attr-defined]
        app.emit(result, lambda: click.echo(f"{result.adapter}: no retention after pushes"))
        return
    if save and keep is None:
        raise click.UsageError("--save needs --keep N")
    if keep is None and app.settings.remote:
        raise click.UsageError("give --keep N")
    result = registry.retain(adapter, keep, save=save)  # type: ignore[attr-defined]

    def human() -> None:
        gone = ", ".join(str(n) for n in result.versions) or "none"
        kept = f" (keeping {result.keep})" if result.keep else " (no retention set)"
        click.echo(f"{result.adapter}: deleted versions {gone}{kept}")
        if save:
            click.echo(f"retention saved: the newest {keep} are kept after every push")

    app.emit(result, human)


@click.command()
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=24 * 3600,
    show_default=True,
    help="Seconds a blob must have been unreferenced (or an upload left) before it goes.",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@json_option
@pass_app
def gc(app: AppContext, grace: float, dry_run: bool) -> None:
    """Collect garbage in the blob store: blobs no version references any more (deleted versions
    and adapters), objects that interrupted pushes stored without a row, and incomplete S3 multipart
    uploads, once older than the grace period. Works on the database and store directly (cron, or
    a job runner calling adapters.registry.gc.collect_garbage).

    \b
    Examples:
      adapters gc --dry-run
      adapters gc --grace 3600 --json
    """
    from adapters.registry.client import LocalRegistry

    app.require_local("adapters gc")
    registry = app.registry
    assert isinstance(registry, LocalRegistry)
    report = registry.collect_garbage(grace_seconds=grace, dry_run=dry_run)

    def human() -> None:
        verb = "would delete" if dry_run else "deleted"
        for digest in report.blobs:
            click.echo(f"{verb} sha256:{digest}")
        for digest in report.orphans:
            click.echo(f"{verb} sha256:{digest} (stored without a row)")
        for upload in report.uploads:
            click.echo(f"aborted {upload}")
        click.echo(
            f"{verb} {len(report.blobs)} blobs ({human_size(report.bytes)}), "
            f"{len(report.orphans)} orphans, {len(report.uploads)} leftovers"
        )

    app.emit(report, human)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise click.ClickException(f"could not collect {report.errors[0]}{more}")
