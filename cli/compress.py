"""adapters compress: a PEFT adapter directory -> one NOLA artifact file (offline, no registry)."""

from __future__ import annotations

from pathlib import Path

import click

from adapters.compress.gate import DATA_FREE_MAX_WEIGHT_ERROR, DEFAULT_PREDICTIONS, MIN_PREDICTIONS_FLOOR

from .context import AppContext, json_option, pass_app
from .fidelity import fidelity_lines

FORMAT_CHOICES = ["auto", "fp16", "int8", "int4", "int3", "int2", "ternary"]


def load_inputs(calibration: Path | None, base_model: Path | None):
    """(statistics, texts, where the texts come from) from --calibration: a statistics file, or texts
    (which need a base model), topped up from the packaged corpus to the number the gate needs."""
    from adapters.compress.calibration import calibration_texts

    if calibration is None:
        if base_model is None:
            return None, None, None
        return (None, *calibration_texts(None))
    from adapters.compress.stats import STATS_FORMAT
    from adapters.compress.stfile import read_metadata

    if calibration.suffix == ".safetensors" and STATS_FORMAT in read_metadata(calibration):
        from adapters.compress.stats import load_stats

        return load_stats(calibration), None, None
    if base_model is None:
        raise click.UsageError("--calibration with texts needs --base-model (a local model directory)")
    return (None, *calibration_texts(calibration))


def source_file_bytes(directory: Path) -> int:
    """The adapter's weights file on disk: what the artifact replaces."""
    from adapters.compress.peft_io import BIN_FILE, SAFETENSORS_FILE

    for name in (SAFETENSORS_FILE, BIN_FILE):
        if (directory / name).is_file():
            return (directory / name).stat().st_size
    raise click.ClickException(f"{directory}: no {SAFETENSORS_FILE}")


def report_fidelity(report) -> dict:
    """A codec report's fidelity with its whole-file sizes, as a version records them."""
    return {
        **report.fidelity,
        "source_bytes": report.source_bytes,
        "artifact_bytes": report.artifact_bytes,
        "ratio": round(report.ratio, 3),
    }


def describe(report) -> str:
    """Lines that never give a ratio without the fidelity it cost."""
    return "\n".join(f"  {label:<10} {line}" for label, line in fidelity_lines(report_fidelity(report)))


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Artifact file."
)
@click.option(
    "--ratio",
    type=float,
    default=32.0,
    show_default=True,
    help="Largest whole-file ratio (source weights file / artifact) the size search tries; "
    "with --no-gate, the exact ratio made.",
)
@click.option("--no-gate", is_flag=True, help="No gate and no search: exactly --ratio (for benchmarks).")
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
    "--code",
    type=click.Choice(["auto", "transform", "rows"]),
    default="auto",
    show_default=True,
    help="transform: SVD gauge, full-size bases, one entropy-coded step; rows: per-row subspaces "
    "and formats; auto: transform for the weight fit, rows for the activation fit and distillation.",
)
@click.option(
    "--extras",
    type=click.Choice(["exact", "fp16"]),
    default="fp16",
    show_default=True,
    help="Tensors NOLA does not model (modules_to_save heads): fp32 ones at fp16, or exact.",
)
@click.option(
    "--fit",
    type=click.Choice(["auto", "weight", "activation", "distill"]),
    default="auto",
    show_default=True,
    help="auto: distill with a base model, activation-aware with statistics, else weight-space.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Input statistics (.safetensors from `adapters calibrate`) or texts (.txt, .jsonl).",
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local base model directory: distill, and measure agreement on held-out texts "
    "(from --calibration, or the packaged corpus).",
)
@click.option("--steps", type=int, default=1000, show_default=True, help="Most distillation steps per run.")
@click.option(
    "--distill-seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="Time budget of one distillation run (it also stops early when validation stops improving).",
)
@click.option(
    "--hidden-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Distillation: weight of the last hidden states' relative MSE beside the KL.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=0.99,
    show_default=True,
    help="Gate: least top-1 agreement with the original on held-out predictions (its lower 95% bound).",
)
@click.option("--max-kl", type=float, help="Gate: largest mean KL(original || compressed), held-out.")
@click.option(
    "--max-weight-error",
    type=float,
    default=DATA_FREE_MAX_WEIGHT_ERROR,
    show_default=True,
    help="Gate without a base model (data-free): largest relative weight error.",
)
@click.option(
    "--held-out-predictions",
    type=int,
    default=DEFAULT_PREDICTIONS,
    show_default=True,
    help=f"Held-out predictions to measure agreement on (at least {MIN_PREDICTIONS_FLOOR}).",
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
    no_gate: bool,
    bits: str,
    basis: str,
    code: str,
    extras: str,
    fit: str,
    calibration: Path | None,
    base_model: Path | None,
    steps: int,
    distill_seconds: float,
    hidden_weight: float,
    min_agreement: float,
    max_kl: float | None,
    max_weight_error: float,
    held_out_predictions: int,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Compress the PEFT LoRA adapter in DIRECTORY into one NOLA artifact: the smallest that passes
    the fidelity gate, searched up to --ratio.

    Prints the bytes before and after (whole files: the weights file against the artifact) with the
    fidelity they cost and what the gate decided on. With a base model (and --calibration texts,
    else the packaged corpus), agreement with the original adapter is measured on held-out
    predictions and the coefficients are distilled; without one the gate is data-free (weight
    error). When no size passes, the most faithful attempt is written, for inspection, and the
    exit status is 1. `adapters reconstruct` turns the artifact back into a PEFT directory;
    `adapters inspect` shows it module by module.

    \b
    Examples:
      adapters compress ./my-lora -o my-lora.nola
      adapters compress ./my-lora -o my-lora.nola --base-model ./llama --calibration texts.txt
      adapters compress ./my-lora -o my-lora.nola --ratio 20 --no-gate     # exactly 20x, unjudged
      adapters compress ./my-lora -o my-lora.nola --extras exact           # the head exactly
    """
    from adapters.compress.distill import DistillConfig
    from adapters.compress.gate import Gate
    from adapters.compress.nola import NolaCodec, NolaConfig
    from adapters.compress.peft_io import read_adapter

    if output.exists() and not force:
        raise click.ClickException(f"{output} exists (use --force to overwrite)")
    try:
        config = NolaConfig(
            ratio=ratio, bits=bits, basis=basis, code=code, extras=extras, fit=fit, seed=seed, device=device
        )
        distill = DistillConfig(steps=steps, max_seconds=distill_seconds, hidden_weight=hidden_weight)
        gate = None
        if not no_gate:
            gate = Gate(min_agreement=min_agreement, max_kl=max_kl, max_weight_error=max_weight_error)
        if held_out_predictions < MIN_PREDICTIONS_FLOOR:
            raise ValueError(f"--held-out-predictions must be at least {MIN_PREDICTIONS_FLOOR}")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    checkpoint = read_adapter(directory)
    stats, texts, _ = load_inputs(calibration, base_model)
    tmp = output.with_name(output.name + ".partial")
    with app.reporter().task("compressing", total=1000) as advance:
        progress_state = {"done": 0}

        def progress(done: int, total: int) -> None:
            now = round(1000 * done / max(total, 1))
            advance(now - progress_state["done"])
            progress_state["done"] = now

        try:
            codec = NolaCodec(
                config,
                stats,
                base_model=base_model,
                texts=texts,
                distill=distill,
                gate=gate,
                held_out_predictions=held_out_predictions,
            )
            report = codec.compress(
                checkpoint, tmp, progress=progress, source_bytes=source_file_bytes(directory)
            )
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    app.emit(
        {"artifact": str(output), **report.to_dict()},
        lambda: click.echo(f"compressed {directory} -> {output}\n{describe(report)}"),
    )
    if report.fidelity.get("gate_passed") is False:
        raise click.ClickException(f"no size passed the fidelity gate: {report.fidelity['gate']['reason']}")
