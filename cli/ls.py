"""adapters ls: list adapters, filtered by task, base model, tag or namespace."""

from __future__ import annotations

import click

from adapters.registry.engines import ENGINES, CompatFilter

from .context import AppContext, echo_table, json_option, pass_app


@click.command()
@click.option("--task", "-t", help="Only adapters for this task.")
@click.option("--base-model", help="Only adapters for this base model.")
@click.option("--tag", help="Only adapters with this tag.")
@click.option("--namespace", help="Only adapters in this namespace.")
@click.option("--max-rank", type=int, help="Only adapters whose latest version has rank <= N.")
@click.option("--no-dora", is_flag=True, help="Only adapters whose latest version is not DoRA.")
@click.option("--no-modules-to-save", is_flag=True, help="Only latest versions without modules_to_save.")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    help="Only adapters whose latest version this engine loads (--max-rank: its --max-lora-rank).",
)
@click.option("--label", "labels", multiple=True, help="Only adapters with a version labelled key=value.")
@json_option
@pass_app
def ls(
    app: AppContext,
    task: str | None,
    base_model: str | None,
    tag: str | None,
    namespace: str | None,
    max_rank: int | None,
    no_dora: bool,
    no_modules_to_save: bool,
    engine: str | None,
    labels: tuple[str, ...],
) -> None:
    """List adapters with their latest version, aliases and tags.

    The compatibility filters judge each adapter's latest version; versions pushed before their
    facts were recorded match none of them.

    \b
    Examples:
      adapters ls --task support --base-model meta-llama/Llama-3.1-8B
      adapters ls --engine vllm --max-rank 64
      adapters ls --label dataset=tickets-v3
    """
    from adapters.registry.labels import parse_pairs

    compat = CompatFilter(
        max_rank=max_rank, no_dora=no_dora, no_modules_to_save=no_modules_to_save, engine=engine
    )
    adapters = app.registry.list(
        namespace=namespace,
        task=task,
        base_model=base_model,
        tag=tag,
        compat=compat if compat.active else None,
        labels=parse_pairs(labels) or None,
    )

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
