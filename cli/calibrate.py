"""adapters calibrate: input statistics of an adapter's modules from a base model and texts."""

from __future__ import annotations

from pathlib import Path

import click

from .context import AppContext, human_size, json_option, pass_app


@click.command()
@click.argument("adapter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Local base model directory (config, weights, tokenizer).",
)
@click.option(
    "--texts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='Calibration texts: .txt (one per line) or .jsonl (a "text" field).',
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Statistics file (.safetensors).",
)
@click.option(
    "--max-rank",
    type=int,
    default=256,
    show_default=True,
    help="Inputs wider than this keep their top eigenpairs plus an isotropic rest.",
)
@click.option("--max-length", type=int, default=128, show_default=True, help="Tokens per text.")
@json_option
@pass_app
def calibrate(
    app: AppContext,
    adapter: Path,
    base_model: Path,
    texts: Path,
    output: Path,
    max_rank: int,
    max_length: int,
) -> None:
    """Collect E[x x^T] at the input of every module ADAPTER adapts, running the base model with the
    adapter on TEXTS. The file feeds `adapters compress --calibration`.

    \b
    Example:
      adapters calibrate ./my-lora --base-model ./llama --texts calib.txt -o stats.safetensors
    """
    from adapters.compress.base_models import load_base_model
    from adapters.compress.calibration import collect_stats, read_texts, with_adapter
    from adapters.compress.peft_io import read_adapter
    from adapters.compress.stats import save_stats

    checkpoint = read_adapter(adapter)
    modules = [p.module for p in checkpoint.pairs]
    corpus = read_texts(texts)
    with app.reporter().task("collecting statistics"):
        model, tokenizer = load_base_model(base_model, adapter=checkpoint)
        stats = collect_stats(
            with_adapter(model, adapter), tokenizer, corpus, modules, max_rank, max_length=max_length
        )
    size = save_stats(output, stats)
    tokens = max((s.count for s in stats.values()), default=0)
    app.emit(
        {"output": str(output), "modules": len(stats), "tokens": tokens, "bytes": size},
        lambda: click.echo(f"wrote {output}: {len(stats)} modules, {tokens} tokens, {human_size(size)}"),
    )
