"""adapters alias set|rm|history|protect|unprotect: movable names, their history, their protection."""

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
      adapters alias history acme/support-en prod
      adapters alias protect acme/support-en prod
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


@alias.command("history")
@click.argument("adapter")
@click.argument("name", required=False)
@json_option
@pass_app
def history(app: AppContext, adapter: str, name: str | None) -> None:
    """Who moved ADAPTER's aliases (or alias NAME) from which version to which, and when.

    \b
    Example:
      adapters alias history acme/support-en prod
    """
    from .context import echo_table

    result = app.registry.alias_history(adapter, name)  # type: ignore[attr-defined]

    def human() -> None:
        if not result.events:
            click.echo("no alias changes", err=True)
            return
        echo_table(
            ["WHEN", "ALIAS", "FROM", "TO", "BY"],
            [
                (f"{e.at:%Y-%m-%d %H:%M:%S}", e.alias, e.from_version, e.to_version, e.actor)
                for e in result.events
            ],
        )

    app.emit(result, human)


def _protection(app: AppContext, adapter: str, name: str, protected: bool) -> None:
    result = app.registry.protect_alias(adapter, name, protected)  # type: ignore[attr-defined]
    state = "protected: only admins move it" if result.protected else "no longer protected"
    app.emit(result, lambda: click.echo(f"{result.adapter}@{result.alias} ({result.version}) {state}"))


@alias.command("protect")
@click.argument("adapter")
@click.argument("name")
@json_option
@pass_app
def protect(app: AppContext, adapter: str, name: str) -> None:
    """Protect alias NAME of ADAPTER: afterwards only admins move or remove it. An admin's act.

    \b
    Example:
      adapters alias protect acme/support-en prod
    """
    _protection(app, adapter, name, True)


@alias.command("unprotect")
@click.argument("adapter")
@click.argument("name")
@json_option
@pass_app
def unprotect(app: AppContext, adapter: str, name: str) -> None:
    """Lift the protection of alias NAME of ADAPTER. An admin's act.

    \b
    Example:
      adapters alias unprotect acme/support-en prod
    """
    _protection(app, adapter, name, False)
