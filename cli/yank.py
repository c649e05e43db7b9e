"""adapters yank: take a version out of `latest` without deleting it."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref")
@click.option("--reason", "-r", help="Why (shown to whoever pulls it explicitly).")
@click.option("--undo", is_flag=True, help="Un-yank the version.")
@json_option
@pass_app
def yank(app: AppContext, ref: str, reason: str | None, undo: bool) -> None:
    """Yank the version REF names: ns/name stops resolving to it, ns/name:N still does.

    \b
    Example:
      adapters yank acme/support-en:4 --reason "regressed on the eval set"
    """
    version = app.registry.unyank(ref) if undo else app.registry.yank(ref, reason)
    app.emit(version, lambda: click.echo(f"{'un-yanked' if undo else 'yanked'} {version.ref}"))
