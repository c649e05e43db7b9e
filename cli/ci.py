"""adapters ci: compress every new or changed adapter, gate it on fidelity, push what passes, report."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from adapters.compress.gate import DATA_FREE_MAX_WEIGHT_ERROR, DEFAULT_PREDICTIONS

from .context import AppContext, human_size, json_option, pass_app


@dataclass
class Outcome:
    """What happened to one adapter directory."""

    path: str
    name: str
    decision: str  # unchanged | passed | pushed | failed | invalid
    digest: str | None = None
    detail: str = ""
    source_bytes: int | None = None
    artifact_bytes: int | None = None
    ratio: float | None = None  # whole files: source / what is stored (1.0 when the source is kept)
    lora_ratio: float | None = None
    codec: str | None = None  # nola, or raw when no size passed the gate
    basis: str | None = None  # what the gate judged
    predictions: int | None = None
    weight_rel_error: float | None = None
    agreement: float | None = None
    agreement_bound: float | None = None
    kl: float | None = None
    version: str | None = None
    fidelity: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.decision in ("unchanged", "passed", "pushed")


def find_adapters(paths: tuple[Path, ...]) -> list[Path]:
    """Adapter directories (holding adapter_config.json) among and below the paths, sorted, unique."""
    found: set[Path] = set()
    for path in paths:
        if (path / "adapter_config.json").is_file():
            found.add(path.resolve())
        found.update(p.parent.resolve() for p in path.rglob("adapter_config.json"))
    return sorted(found)


def adapter_name(namespace: str, directory: Path) -> str:
    """ns/<directory name, lower-cased, other characters as '-'>."""
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.name.lower()).strip("-._") or "adapter"
    return f"{namespace}/{name[:64]}"


def gate_description(settings: dict[str, Any]) -> str:
    kl = f", KL <= {settings['max_kl']}" if settings.get("max_kl") is not None else ""
    return (
        f"sizes searched up to {settings['ratio']:g}x, least ratio {settings['min_ratio']:g}x; "
        f"gate: held-out agreement >= {settings['min_agreement']} (lower 95% bound, "
        f">= {settings['min_predictions']} predictions){kl} with a base model, "
        f"else weight error <= {settings['max_weight_error']} (data-free)"
    )


def markdown(outcomes: list[Outcome], settings: dict[str, Any]) -> str:
    lines = [
        "## Adapter compression report",
        "",
        gate_description(settings),
        "",
        "| adapter | decision | codec | source | stored | ratio | LoRA ratio | judged on | predictions "
        "| agreement (bound) | KL | weight error | detail |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(value, fmt, suffix=""):
        return "-" if value is None else format(value, fmt) + suffix

    for o in outcomes:
        agreement = num(o.agreement, ".4f")
        if o.agreement_bound is not None:
            agreement += f" ({o.agreement_bound:.4f})"
        lines.append(
            f"| {o.name} | {o.decision} | {o.codec or '-'} | {human_size(o.source_bytes)} "
            f"| {human_size(o.artifact_bytes)} | {num(o.ratio, '.1f', 'x')} "
            f"| {num(o.lora_ratio, '.1f', 'x')} "
            f"| {o.basis or '-'} | {num(o.predictions, 'd')} | {agreement} | {num(o.kl, '.2e')} "
            f"| {num(o.weight_rel_error, '.3f')} | {o.detail.replace('|', '/')} |"
        )
    failed = sum(not o.ok for o in outcomes)
    lines += ["", f"{len(outcomes)} adapters, {failed} failed."]
    return "\n".join(lines) + "\n"


def judge(directory: Path, name: str, digest: str, report, min_ratio: float) -> Outcome:
    """The outcome of one adapter's compression: the smallest passing artifact, or the lossless
    source when no size passed; failed only when that is less than `min_ratio`."""
    f = report.fidelity
    gate = f.get("gate") or {}
    held = f.get("held_out", {})
    passed = bool(f.get("gate_passed"))
    ratio = round(report.ratio, 2) if passed else 1.0
    outcome = Outcome(
        str(directory),
        name,
        "passed",
        digest,
        gate.get("reason", "") if passed else f"kept lossless: {gate.get('reason', '')}",
        report.source_bytes,
        report.artifact_bytes if passed else report.source_bytes,
        ratio,
        f.get("lora_ratio") if passed else None,
        "nola" if passed else "raw",
        gate.get("basis"),
        gate.get("predictions") or None,
        f.get("weight_rel_error"),
        held.get("agreement"),
        gate.get("bound"),
        held.get("kl"),
        fidelity={k: v for k, v in f.items() if k != "modules"},
    )
    if ratio < min_ratio:
        outcome.decision = "failed"
        outcome.detail = f"ratio {ratio:g}x < least ratio {min_ratio:g}x ({outcome.detail})"
    return outcome


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--namespace", required=True, help="Namespace to push to; each adapter is named after its directory."
)
@click.option("--task", help="Task of adapters new to the registry.")
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local base model directory: distill and gate on held-out agreement (else data-free).",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Calibration texts (.txt, .jsonl), topped up from the packaged corpus.",
)
@click.option(
    "--ratio",
    type=float,
    default=32.0,
    show_default=True,
    help="Largest whole-file ratio the size search tries.",
)
@click.option(
    "--min-ratio",
    type=float,
    default=1.0,
    show_default=True,
    help="Fail an adapter whose stored size is not this many times smaller than its source.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=0.99,
    show_default=True,
    help="Gate: held-out top-1 agreement (its lower 95% bound).",
)
@click.option("--max-kl", type=float, help="Gate: held-out mean KL(original || compressed).")
@click.option(
    "--max-weight-error",
    type=float,
    default=DATA_FREE_MAX_WEIGHT_ERROR,
    show_default=True,
    help="Gate without a base model (data-free): relative weight error.",
)
@click.option(
    "--held-out-predictions",
    type=int,
    default=DEFAULT_PREDICTIONS,
    show_default=True,
    help="Held-out predictions to measure agreement on.",
)
@click.option("--steps", type=int, default=1000, show_default=True, help="Most distillation steps per run.")
@click.option("--dry-run", is_flag=True, help="Compress and gate, but push nothing.")
@click.option(
    "--report-md", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown report here."
)
@click.option(
    "--report-json", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here."
)
@json_option
@pass_app
def ci(
    app: AppContext,
    paths: tuple[Path, ...],
    namespace: str,
    task: str | None,
    base_model: Path | None,
    calibration: Path | None,
    ratio: float,
    min_ratio: float,
    min_agreement: float,
    max_kl: float | None,
    max_weight_error: float,
    held_out_predictions: int,
    steps: int,
    dry_run: bool,
    report_md: Path | None,
    report_json: Path | None,
) -> None:
    """Compress each adapter directory under PATHS that is new or changed to the smallest size that
    passes the fidelity gate (or keep it lossless when none does), and push it.

    An adapter is unchanged when the registry already holds its content (same canonical digest).
    The registry compresses what is pushed with the same settings. Prints a Markdown report (or JSON
    with --json) and exits 1 if any adapter is invalid, could not be pushed, or is stored less than
    --min-ratio times smaller than its source.

    \b
    Example (in a training pipeline, after the adapters are saved):
      adapters ci ./adapters --namespace acme --task support --base-model ./llama --calibration calib.txt \\
          --min-ratio 4 --report-md report.md
    """
    from adapters.compress.calibration import calibration_texts
    from adapters.compress.codec import canonical_bytes
    from adapters.compress.distill import DistillConfig
    from adapters.compress.errors import CompressError
    from adapters.compress.gate import Gate
    from adapters.compress.nola import NolaCodec, NolaConfig
    from adapters.compress.peft_io import read_adapter
    from adapters.registry import folder_files
    from adapters.registry.errors import InvalidAdapterUpload, NotFound, RegistryError

    try:
        config = NolaConfig(ratio=ratio)
        gate = Gate(min_agreement=min_agreement, max_kl=max_kl, max_weight_error=max_weight_error)
        distill = DistillConfig(steps=steps)
        if held_out_predictions < gate.min_predictions or min_ratio < 0:
            raise ValueError(
                f"--held-out-predictions must be at least {gate.min_predictions}, --min-ratio >= 0"
            )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    texts = calibration_texts(calibration)[0] if base_model is not None else None
    directories = find_adapters(paths)
    if not directories:
        raise click.ClickException(
            f"no adapter directories (with adapter_config.json) under {', '.join(map(str, paths))}"
        )
    params: dict[str, Any] = {
        "ratio": ratio,
        "min_agreement": min_agreement,
        "max_weight_error": max_weight_error,
        "held_out_predictions": held_out_predictions,
        "distill_steps": steps,
    }
    if max_kl is not None:
        params["max_kl"] = max_kl

    outcomes: list[Outcome] = []
    reporter = app.reporter()
    for directory in directories:
        name = adapter_name(namespace, directory)
        try:
            checkpoint = read_adapter(directory)
        except CompressError as exc:
            outcomes.append(Outcome(str(directory), name, "invalid", detail=" ".join(str(exc).split())))
            continue
        digest = hashlib.sha256(canonical_bytes(checkpoint)).hexdigest()
        try:  # the version's identity covers the files beside the weights (README, tokenizer)
            extras = folder_files.collect(directory, str(directory))
        except InvalidAdapterUpload as exc:
            outcomes.append(Outcome(str(directory), name, "invalid", detail=str(exc)))
            continue
        try:
            known = app.registry.resolve(f"{name}@sha256:{folder_files.content_digest(digest, extras)}")
            if known.status != "failed":
                outcomes.append(
                    Outcome(
                        str(directory), name, "unchanged", digest, f"already {known.ref}", version=known.ref
                    )
                )
                continue
        except NotFound:
            pass  # new adapter, or new content (anything else, e.g. a bad token, stops the run)
        codec = NolaCodec(
            config,
            base_model=base_model,
            texts=texts,
            distill=distill,
            gate=gate,
            held_out_predictions=held_out_predictions,
        )
        with tempfile.TemporaryDirectory(prefix="adapters-ci-") as tmp, reporter.task(f"compressing {name}"):
            report = codec.compress(checkpoint, Path(tmp) / "artifact")
        outcome = judge(directory, name, digest, report, min_ratio)
        if outcome.decision == "passed" and not dry_run:
            try:
                pushed = app.registry.push(
                    directory,
                    name,
                    task=task,
                    codec=outcome.codec or "raw",
                    params=params if outcome.codec == "nola" else {},
                    on_gate_fail="raw",
                    created_by=app.user,
                    reporter=reporter,
                )
            except RegistryError as exc:  # reported with the others rather than ending the run
                outcome.decision, outcome.detail = "failed", f"registry: {exc}"
            else:
                outcome.version = pushed.version.ref
                if pushed.version.status in ("failed", "rejected"):
                    outcome.decision, outcome.detail = "failed", f"registry: {pushed.version.error}"
                else:
                    outcome.decision = "pushed"
        outcomes.append(outcome)

    settings = {
        "ratio": ratio,
        "min_ratio": min_ratio,
        "min_agreement": min_agreement,
        "max_kl": max_kl,
        "max_weight_error": max_weight_error,
        "min_predictions": gate.min_predictions,
        "held_out_predictions": held_out_predictions,
        "dry_run": dry_run,
    }
    document = {"settings": settings, "adapters": [asdict(o) for o in outcomes]}
    text = markdown(outcomes, settings)
    if report_md:
        report_md.write_text(text)
    if report_json:
        report_json.write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
    app.emit(document, lambda: click.echo(text, nl=False))
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(outcomes)} adapters failed: {', '.join(o.name for o in failed)}"
        )
