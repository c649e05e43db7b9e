"""adapters alias set|rm: movable names for versions."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.group()
def alias() -> None:
    """Point names such as prod or canary at versions (`latest` is always the newest ready one).

    \b
    Examples:
      adapters alias set acme/support-en:3 prod
      adapters alias rm acme/support-en prod
    """


@alias.command("set")
@click.argument("ref")
@click.argument("name")
@json_option
@pass_app
def set_alias(app: AppContext, ref: str, name: str) -> None:
    """Point alias NAME at the version REF names (created, or moved from where it was).

    \b
    Example:
      adapters alias set acme/support-en:3 prod
    """
    result = app.registry.set_alias(ref, name, by=app.user)
    was = f" (was {result.previous})" if result.previous is not None else ""
    app.emit(result, lambda: click.echo(f"{result.adapter}@{result.alias} -> {result.version}{was}"))


@alias.command("rm")
@click.argument("adapter")
@click.argument("name")
@json_option
@pass_app
def remove_alias(app: AppContext, adapter: str, name: str) -> None:
    """Remove alias NAME from ADAPTER (ns/name).

    \b
    Example:
      adapters alias rm acme/support-en canary
    """
    result = app.registry.remove_alias(adapter, name)
    app.emit(result, lambda: click.echo(f"removed {result.adapter}@{result.alias} (was {result.previous})"))
