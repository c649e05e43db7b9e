"""adapters compress: a PEFT adapter directory -> one NOLA artifact file (offline, no registry)."""

from __future__ import annotations

from pathlib import Path

import click

from .context import AppContext, human_size, json_option, pass_app

FORMAT_CHOICES = ["auto", "fp16", "int8", "int4", "int3", "int2", "ternary"]


def load_inputs(calibration: Path | None, base_model: Path | None):
    """(statistics, texts) from --calibration: a statistics file, or texts (which need a base model).
    A base model without --calibration uses the packaged corpus."""
    if calibration is None:
        if base_model is None:
            return None, None
        from adapters.compress.calibration import default_texts

        return None, default_texts()
    from adapters.compress.stats import STATS_FORMAT
    from adapters.compress.stfile import read_metadata

    if calibration.suffix == ".safetensors" and STATS_FORMAT in read_metadata(calibration):
        from adapters.compress.stats import load_stats

        return load_stats(calibration), None
    if base_model is None:
        raise click.UsageError("--calibration with texts needs --base-model (a local model directory)")
    from adapters.compress.calibration import read_texts

    return None, read_texts(calibration)


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
    held = f.get("held_out", {})
    if "agreement" in held:
        parts.append(
            f"held-out agreement {held['agreement']:.4f}, KL {held['kl']:.2e} ({held['predictions']})"
        )
    if "gate" in f:
        parts.append(f"gate {'passed' if f['gate_passed'] else 'FAILED'} ({f['gate']['reason']})")
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
@click.option("--steps", type=int, default=200, show_default=True, help="Distillation steps.")
@click.option(
    "--hidden-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Distillation: weight of the last hidden states' relative MSE beside the KL.",
)
@click.option("--min-agreement", type=float, help="Gate: least top-1 agreement with the original (held-out).")
@click.option("--max-kl", type=float, help="Gate: largest mean KL(original || compressed), held-out.")
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
    steps: int,
    hidden_weight: float,
    min_agreement: float | None,
    max_kl: float | None,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Compress the PEFT LoRA adapter in DIRECTORY into one NOLA artifact.

    Prints the bytes before and after with the fidelity they cost. `adapters reconstruct` turns the
    artifact back into a PEFT directory; `adapters inspect` shows it module by module.

    With a base model, the coefficients are distilled against the original adapter and top-1
    agreement and KL are measured on held-out texts; --min-agreement / --max-kl turn that into a gate
    (exit status 1 when it is missed; the artifact is still written, for inspection).

    \b
    Examples:
      adapters compress ./my-lora -o my-lora.nola --ratio 20
      adapters compress ./my-lora -o my-lora.nola --base-model ./llama --calibration texts.txt \\
          --min-agreement 0.99
    """
    from adapters.compress.distill import DistillConfig
    from adapters.compress.nola import NolaCodec, NolaConfig
    from adapters.compress.peft_io import read_adapter
    from adapters.compress.pipeline import Gate

    if output.exists() and not force:
        raise click.ClickException(f"{output} exists (use --force to overwrite)")
    try:
        config = NolaConfig(ratio=ratio, bits=bits, basis=basis, fit=fit, seed=seed, device=device)
        distill = DistillConfig(steps=steps, hidden_weight=hidden_weight)
        gated = min_agreement is not None or max_kl is not None
        gate = Gate(min_agreement=min_agreement, max_kl=max_kl) if gated else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    checkpoint = read_adapter(directory)
    stats, texts = load_inputs(calibration, base_model)
    tmp = output.with_name(output.name + ".partial")
    with app.reporter().task("compressing", total=1, unit="steps") as advance:
        progress_state = {"done": 0}

        def progress(done: int, total: int) -> None:
            advance((done - progress_state["done"]) / max(total, 1))
            progress_state["done"] = done

        try:
            codec = NolaCodec(config, stats, base_model=base_model, texts=texts, distill=distill, gate=gate)
            report = codec.compress(checkpoint, tmp, progress=progress)
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    app.emit(
        {"artifact": str(output), **report.to_dict()},
        lambda: click.echo(f"compressed {directory} -> {output}: {describe(report)}"),
    )
    if report.fidelity.get("gate_passed") is False:
        raise click.ClickException(f"fidelity gate missed: {report.fidelity['gate']['reason']}")
