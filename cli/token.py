"""adapters token create|ls|revoke: API tokens."""

from __future__ import annotations

import datetime as dt

import click

from .context import AppContext, echo_table, json_option, pass_app


@click.group()
def token() -> None:
    """Make, list and revoke API tokens. Run against the database directly (an operator with its
    credentials is an admin) or through ADAPTERS_URL with an admin token.

    \b
    Examples:
      adapters token create --scope write --namespace acme --name ci
      adapters token ls
      adapters token revoke 3f2a9c1b7d4e
    """


@token.command()
@click.option(
    "--scope",
    type=click.Choice(["read", "write", "admin"]),
    required=True,
    help="read: list, show, pull; write: also push, aliases, yank; admin: also tokens.",
)
@click.option("--namespace", help="Limit the token to this namespace (default: every namespace).")
@click.option(
    "--name", default="cli", show_default=True, help="What the token is for (shown in lists and logs)."
)
@click.option("--expires-in", type=click.FloatRange(min=0, min_open=True), help="Days until it expires.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the token (for scripts).")
@json_option
@pass_app
def create(
    app: AppContext, scope: str, namespace: str | None, name: str, expires_in: float | None, quiet: bool
) -> None:
    """Make a token. Its secret is printed this once: only its sha256 is stored.

    \b
    Example:
      export ADAPTERS_TOKEN=$(adapters token create --scope write --namespace acme -q)
    """
    expires_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=expires_in) if expires_in else None
    result = app.registry.create_token(name, scope, namespace=namespace, expires_at=expires_at, by=app.user)

    def human() -> None:
        if quiet:
            click.echo(result.secret)
            return
        t = result.token
        where = f"namespace {t.namespace}" if t.namespace else "every namespace"
        click.echo(f"token {t.id} ({t.name}): scope {t.scope}, {where}", err=True)
        click.echo("the secret below is shown this once; keep it (e.g. in ADAPTERS_TOKEN):", err=True)
        click.echo(result.secret)

    app.emit(result, human)


@token.command("ls")
@click.option("--all", "include_revoked", is_flag=True, help="Also list revoked tokens.")
@json_option
@pass_app
def list_tokens(app: AppContext, include_revoked: bool) -> None:
    """List tokens (never their secrets).

    \b
    Example:
      adapters token ls --all
    """
    found = app.registry.list_tokens(include_revoked=include_revoked)

    def when(value: dt.datetime | None) -> str | None:
        return f"{value:%Y-%m-%d %H:%M}" if value else None

    def human() -> None:
        if not found:
            click.echo("no tokens", err=True)
            return
        echo_table(
            ["ID", "NAME", "SCOPE", "NAMESPACE", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
            [
                (t.id, t.name, t.scope, t.namespace or "*", when(t.created_at), when(t.last_used_at),
                 when(t.expires_at), when(t.revoked_at))
                for t in found
            ],
        )  # fmt: skip

    app.emit({"tokens": [t.to_json() for t in found]}, human)


@token.command()
@click.argument("token_id")
@json_option
@pass_app
def revoke(app: AppContext, token_id: str) -> None:
    """Revoke the token TOKEN_ID (the id `token ls` shows); it stops working at once.

    \b
    Example:
      adapters token revoke 3f2a9c1b7d4e
    """
    result = app.registry.revoke_token(token_id)
    app.emit(result, lambda: click.echo(f"revoked token {result.id} ({result.name})"))
