"""adapters sync: keep a folder of plain PEFT adapters, DIR/<ns>/<name>/, in step with the registry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from adapters.registry.engines import ENGINES, EngineOptions

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--namespace", help="Only adapters in this namespace.")
@click.option("--task", "-t", help="Only adapters for this task.")
@click.option("--base-model", help="Only adapters for this base model.")
@click.option("--tag", help="Only adapters with this tag.")
@click.option("--alias", help="The version this alias points to (adapters without it are left out).")
@click.option(
    "--served-base-model",
    help="Write this as base_model_name_or_path (vLLM's filesystem resolver wants the served model's name).",
)
@click.option("--prune", is_flag=True, help="Remove the folders sync wrote for adapters no longer selected.")
@click.option("--engine", type=click.Choice(ENGINES), help="Only versions this engine loads.")
@click.option("--max-lora-rank", type=int, help="With --engine: its rank limit (vLLM's --max-lora-rank).")
@json_option
@pass_app
def sync(
    app: AppContext,
    directory: Path,
    namespace: str | None,
    task: str | None,
    base_model: str | None,
    tag: str | None,
    alias: str | None,
    served_base_model: str | None,
    prune: bool,
    engine: str | None,
    max_lora_rank: int | None,
) -> None:
    """Write the selected adapters into DIRECTORY as DIRECTORY/<ns>/<name>/ (the latest ready version,
    or with --alias the version it points to): the layout vLLM's filesystem resolver
    (VLLM_LORA_RESOLVER_CACHE_DIR), NIM (NIM_PEFT_SOURCE), LoRAX (adapter_source=local) and SGLang
    read.

    Adapters already there at the same version are not rewritten; each one is written beside its
    place and renamed in. Exit status 1 when a folder in the way was not written by sync.

    \b
    Examples:
      adapters sync /srv/loras --base-model meta-llama/Llama-3.1-8B --alias prod --prune
      adapters sync /srv/loras --engine vllm --served-base-model meta-llama/Llama-3.1-8B --json
    """
    from adapters.registry.sync import SyncRequest
    from adapters.registry.sync import sync as run_sync

    if max_lora_rank is not None and engine is None:
        raise click.UsageError("--max-lora-rank is the limit of an --engine: give the engine too")

    request = SyncRequest(
        directory=directory,
        namespace=namespace,
        task=task,
        base_model=base_model,
        tag=tag,
        alias=alias,
        served_base_model=served_base_model,
        prune=prune,
        engine=engine,
        engine_options=EngineOptions(max_lora_rank=max_lora_rank),
    )
    report = run_sync(app.registry, request, reporter=app.reporter())

    def human() -> None:
        for ref in report.written:
            click.echo(f"wrote     {ref}")
        for name in report.pruned:
            click.echo(f"pruned    {name}")
        for skipped in report.skipped:
            click.echo(f"skipped   {skipped['adapter']}: {skipped['reason']}")
        click.echo(
            f"{len(report.written)} written, {len(report.unchanged)} unchanged, "
            f"{len(report.pruned)} pruned, {len(report.skipped)} skipped in {report.directory}"
        )

    app.emit(report.to_json(), human)
    if report.conflicts:
        sys.exit(1)
