"""adapters check: does a serving engine load this version, and if not, why."""

from __future__ import annotations

import sys

import click

from adapters.registry.engines import ENGINES, EngineOptions, engine, problems

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref")
@click.option("--engine", "engine_name", type=click.Choice(ENGINES), required=True, help="The engine.")
@click.option(
    "--max-lora-rank",
    type=int,
    help="The engine's rank limit (vLLM's --max-lora-rank: 8, 16 (default), 32, ..., 512).",
)
@click.option("--enable-lora-bias", is_flag=True, help="vLLM runs with --enable-lora-bias.")
@json_option
@pass_app
def check(
    app: AppContext, ref: str, engine_name: str, max_lora_rank: int | None, enable_lora_bias: bool
) -> None:
    """Say whether ENGINE loads the version REF names, with one line per reason it does not.

    Judged on the compatibility facts recorded at push (nothing is downloaded). Exit status 0 when
    the engine loads it, 1 when it does not (or its facts are unknown).

    \b
    Examples:
      adapters check acme/support-en@prod --engine vllm
      adapters check acme/support-en:3 --engine vllm --max-lora-rank 64 --json
    """
    options = EngineOptions(max_lora_rank=max_lora_rank, enable_lora_bias=enable_lora_bias)
    rules = engine(engine_name, options)  # a bad rank for this engine is refused before any lookup
    version = app.registry.resolve(ref)
    reasons = problems(version.compat, engine_name, options)
    result = {
        "ref": version.ref,
        "engine": engine_name,
        "loads": not reasons,
        "reasons": reasons,
        "assumptions": list(rules.assumptions),
        "facts": version.compat,
    }

    def human() -> None:
        if not reasons:
            click.echo(f"{engine_name} loads {version.ref}")
        for reason in reasons:
            click.echo(f"{version.ref}: {reason}")

    app.emit(result, human)
    if reasons:
        sys.exit(1)
