"""adapters ls: list adapters, filtered by task, base model, tag or namespace."""

from __future__ import annotations

import click

from .context import AppContext, echo_table, json_option, pass_app


@click.command()
@click.option("--task", "-t", help="Only adapters for this task.")
@click.option("--base-model", help="Only adapters for this base model.")
@click.option("--tag", help="Only adapters with this tag.")
@click.option("--namespace", help="Only adapters in this namespace.")
@json_option
@pass_app
def ls(
    app: AppContext, task: str | None, base_model: str | None, tag: str | None, namespace: str | None
) -> None:
    """List adapters with their latest version, aliases and tags.

    \b
    Example:
      adapters ls --task support --base-model meta-llama/Llama-3.1-8B
    """
    adapters = app.registry.list(namespace=namespace, task=task, base_model=base_model, tag=tag)

    def human() -> None:
        if not adapters:
            click.echo("no adapters", err=True)
            return
        echo_table(
            ["NAME", "TASK", "BASE MODEL", "LATEST", "VERSIONS", "ALIASES", "TAGS"],
            [
                (
                    a.name,
                    a.task,
                    a.base_model,
                    a.latest,
                    a.versions,
                    ",".join(f"{k}={v}" for k, v in a.aliases.items()),
                    ",".join(a.tags),
                )
                for a in adapters
            ],
        )

    app.emit({"adapters": [a.to_json() for a in adapters]}, human)
