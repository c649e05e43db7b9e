"""adapters compress: a PEFT adapter directory -> one NOLA artifact file (offline, no registry)."""

from __future__ import annotations

from pathlib import Path

import click

from .context import AppContext, human_size, json_option, pass_app

FORMAT_CHOICES = ["auto", "fp16", "int8", "int4", "int3", "int2", "ternary"]


def load_calibration(app: AppContext, calibration: Path | None, base_model: Path | None, adapter_dir: Path):
    """Input statistics from a statistics file, or collected from texts with a base model."""
    if calibration is None:
        return None
    from adapters.compress.stats import STATS_FORMAT
    from adapters.compress.stfile import read_metadata

    if calibration.suffix == ".safetensors" and STATS_FORMAT in read_metadata(calibration):
        from adapters.compress.stats import load_stats

        return load_stats(calibration)
    if base_model is None:
        raise click.UsageError("--calibration with texts needs --base-model (a local model directory)")
    from adapters.compress.calibration import collect_stats, load_base_model, read_texts, with_adapter
    from adapters.compress.peft_io import read_adapter

    texts = read_texts(calibration)
    modules = [p.module for p in read_adapter(adapter_dir).pairs]
    with app.reporter().task("collecting statistics"):
        model, tokenizer = load_base_model(base_model)
        return collect_stats(with_adapter(model, adapter_dir), tokenizer, texts, modules)


def describe(report) -> str:
    """One line that never gives a ratio without the fidelity it cost."""
    f = report.fidelity
    parts = [
        f"{human_size(report.source_bytes)} -> {human_size(report.artifact_bytes)} ({report.ratio:.1f}x)",
        f"fit {report.params.get('fit', '-')}",
        f"{report.params.get('bits_per_coefficient', '-')} bits/coefficient",
        f"weight error {f.get('weight_rel_error', 0):.3f} "
        f"(worst module {f.get('weight_rel_error_max', 0):.3f})",
    ]
    if "output_rel_error" in f:
        parts.append(f"output error {f['output_rel_error']:.3f} (worst {f['output_rel_error_max']:.3f})")
    return ", ".join(parts)


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Artifact file."
)
@click.option("--ratio", type=float, default=20.0, show_default=True, help="LoRA bytes / coefficient bytes.")
@click.option(
    "--bits",
    type=click.Choice(FORMAT_CHOICES),
    default="auto",
    show_default=True,
    help="Coefficient format; auto chooses per factor (rate-distortion).",
)
@click.option(
    "--basis",
    type=click.Choice(["fast", "dense"]),
    default="fast",
    show_default=True,
    help="fast: structured, O(n log n); dense: the paper's uniform matrices.",
)
@click.option(
    "--fit",
    type=click.Choice(["auto", "weight", "activation"]),
    default="auto",
    show_default=True,
    help="auto fits activations when calibration is given, else weights.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Input statistics (.safetensors from `adapters calibrate`) or texts (.txt, .jsonl).",
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local base model directory, to collect statistics from --calibration texts.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random bases.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@json_option
@pass_app
def compress(
    app: AppContext,
    directory: Path,
    output: Path,
    ratio: float,
    bits: str,
    basis: str,
    fit: str,
    calibration: Path | None,
    base_model: Path | None,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Compress the PEFT LoRA adapter in DIRECTORY into one NOLA artifact.

    Prints the bytes before and after with the fidelity they cost. `adapters reconstruct` turns the
    artifact back into a PEFT directory; `adapters inspect` shows it module by module.

    \b
    Examples:
      adapters compress ./my-lora -o my-lora.nola --ratio 20
      adapters compress ./my-lora -o my-lora.nola --calibration texts.txt --base-model ./llama
    """
    from adapters.compress.nola import NolaCodec, NolaConfig
    from adapters.compress.peft_io import read_adapter

    if output.exists() and not force:
        raise click.ClickException(f"{output} exists (use --force to overwrite)")
    try:
        config = NolaConfig(ratio=ratio, bits=bits, basis=basis, fit=fit, seed=seed, device=device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    checkpoint = read_adapter(directory)
    stats = load_calibration(app, calibration, base_model, directory)
    tmp = output.with_name(output.name + ".partial")
    with app.reporter().task("compressing", total=1, unit="steps") as advance:
        progress_state = {"done": 0}

        def progress(done: int, total: int) -> None:
            advance((done - progress_state["done"]) / max(total, 1))
            progress_state["done"] = done

        try:
            report = NolaCodec(config, stats).compress(checkpoint, tmp, progress=progress)
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    app.emit(
        {"artifact": str(output), **report.to_dict()},
        lambda: click.echo(f"compressed {directory} -> {output}: {describe(report)}"),
    )
