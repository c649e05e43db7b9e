"""adapters webhook create|ls|rm|test|deliveries: event subscriptions of a namespace (PostgreSQL
registries; admin, or admin of that namespace)."""

from __future__ import annotations

import click

from .context import AppContext, echo_table, json_option, pass_app

EVENTS = "version.ready, version.failed, version.rejected, version.yanked, alias.moved, alias.deleted"


@click.group()
def webhook() -> None:
    """Webhooks: POST signed events of a namespace to a URL. Events: version.ready, version.failed,
    version.rejected, version.yanked, alias.moved (created or moved), alias.deleted. Needs a
    PostgreSQL registry (workers deliver them); an admin token, or one for the namespace's admin.

    \b
    Examples:
      adapters webhook create https://ci.example.com/hook --namespace acme --events version.ready,alias.moved
      adapters webhook ls
      adapters webhook test 1
      adapters webhook deliveries 1 --json
      adapters webhook rm 1
    """


def _echo(found: list) -> None:
    echo_table(
        ["ID", "NAMESPACE", "URL", "EVENTS", "CREATED BY"],
        [(h.id, h.namespace, h.url, ",".join(h.events), h.created_by or "-") for h in found],
    )


@webhook.command()
@click.argument("url")
@click.option("--namespace", "-n", required=True, help="The namespace whose events are sent.")
@click.option("--events", "event_types", required=True, help=f"Comma-separated, of: {EVENTS}.")
@click.option("--secret", help="The signing secret (16-128 characters); default: a generated one.")
@json_option
@pass_app
def create(app: AppContext, url: str, namespace: str, event_types: str, secret: str | None) -> None:
    """Subscribe URL to events of a namespace. Prints the signing secret once: keep it, receivers
    check X-Adapters-Signature with it.

    \b
    Example:
      adapters webhook create https://ci.example.com/hook -n acme --events version.ready,alias.moved
    """
    hook = app.registry.create_webhook(url, namespace, event_types.split(","), secret=secret)

    def human() -> None:
        _echo([hook])
        click.echo(f"secret (shown once): {hook.secret}")

    app.emit({"webhook": hook.as_dict()}, human)


@webhook.command("ls")
@json_option
@pass_app
def ls(app: AppContext) -> None:
    """List the webhooks you administer.

    \b
    Example:
      adapters webhook ls --json
    """
    found = app.registry.list_webhooks()

    def human() -> None:
        if not found:
            click.echo("no webhooks", err=True)
            return
        _echo(found)

    app.emit({"webhooks": [h.as_dict() for h in found]}, human)


@webhook.command()
@click.argument("webhook_id", type=click.IntRange(min=1))
@json_option
@pass_app
def rm(app: AppContext, webhook_id: int) -> None:
    """Remove a webhook (its pending deliveries are dropped).

    \b
    Example:
      adapters webhook rm 3
    """
    hook = app.registry.remove_webhook(webhook_id)
    app.emit({"webhook": hook.as_dict()}, lambda: click.echo(f"removed webhook {hook.id} ({hook.url})"))


def _echo_deliveries(found: list) -> None:
    echo_table(
        ["DELIVERY", "EVENT", "TYPE", "ATTEMPT", "STATUS", "AT", "ERROR"],
        [
            (
                d.id,
                d.event_id,
                d.type,
                d.attempt,
                d.status_code or "-",
                f"{d.at:%Y-%m-%d %H:%M:%S}",
                d.error or "",
            )
            for d in found
        ],
    )


@webhook.command()
@click.argument("webhook_id", type=click.IntRange(min=1))
@json_option
@pass_app
def test(app: AppContext, webhook_id: int) -> None:
    """Send a `ping` event to the webhook now and show the receiver's answer; exits 1 if it did not
    answer 2xx.

    \b
    Example:
      adapters webhook test 3
    """
    delivery = app.registry.ping_webhook(webhook_id)
    app.emit({"delivery": delivery.as_dict()}, lambda: _echo_deliveries([delivery]))
    if delivery.error:
        raise click.ClickException(f"webhook {webhook_id} did not take the ping: {delivery.error}")


@webhook.command()
@click.argument("webhook_id", type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@pass_app
def deliveries(app: AppContext, webhook_id: int, limit: int) -> None:
    """The webhook's delivery log, newest first: each attempt's status code or error.

    \b
    Example:
      adapters webhook deliveries 3 --json
    """
    found = app.registry.webhook_deliveries(webhook_id, limit=limit)

    def human() -> None:
        if not found:
            click.echo("no deliveries", err=True)
            return
        _echo_deliveries(found)

    app.emit({"deliveries": [d.as_dict() for d in found]}, human)
