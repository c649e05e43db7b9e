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
    ratio: float | None = None
    weight_rel_error: float | None = None
    agreement: float | None = None
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


def markdown(outcomes: list[Outcome], settings: dict[str, Any]) -> str:
    lines = [
        "## Adapter compression report",
        "",
        f"ratio target {settings['ratio']}x, gate: agreement >= {settings['min_agreement']}"
        + (f", KL <= {settings['max_kl']}" if settings.get("max_kl") is not None else ""),
        "",
        "| adapter | decision | source | artifact | ratio | weight error | agreement | KL | detail |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for o in outcomes:
        lines.append(
            f"| {o.name} | {o.decision} | {human_size(o.source_bytes)} | {human_size(o.artifact_bytes)} "
            f"| {num(o.ratio, '.1f')}{'x' if o.ratio else ''} | {num(o.weight_rel_error, '.3f')} "
            f"| {num(o.agreement, '.4f')} | {num(o.kl, '.2e')} | {o.detail.replace('|', '/')} |"
        )
    failed = sum(not o.ok for o in outcomes)
    lines += ["", f"{len(outcomes)} adapters, {failed} failed."]
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--namespace", required=True, help="Namespace to push to; each adapter is named after its directory."
)
@click.option("--task", help="Task of adapters new to the registry.")
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local base model directory: distill and gate on held-out agreement (else the weight error).",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Calibration texts (.txt, .jsonl); default: the packaged corpus.",
)
@click.option("--ratio", type=float, default=20.0, show_default=True, help="LoRA bytes / coefficient bytes.")
@click.option(
    "--min-agreement", type=float, default=0.99, show_default=True, help="Gate: held-out top-1 agreement."
)
@click.option("--max-kl", type=float, help="Gate: held-out mean KL(original || compressed).")
@click.option(
    "--max-weight-error",
    type=float,
    default=0.05,
    show_default=True,
    help="Gate without a base model: relative weight error.",
)
@click.option("--steps", type=int, default=200, show_default=True, help="Distillation steps.")
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
    min_agreement: float,
    max_kl: float | None,
    max_weight_error: float,
    steps: int,
    dry_run: bool,
    report_md: Path | None,
    report_json: Path | None,
) -> None:
    """Compress each adapter directory under PATHS that is new or changed, gate it on fidelity, and
    push the ones that pass (as codec nola, rejected by the registry too if its own gate is missed).

    An adapter is unchanged when the registry already holds its content (same canonical digest).
    Prints a Markdown report (or JSON with --json) and exits 1 if any adapter is invalid or missed
    the gate.

    \b
    Example (in a training pipeline, after the adapters are saved):
      adapters ci ./adapters --namespace acme --task support --base-model ./llama --calibration calib.txt \\
          --report-md report.md
    """
    from adapters.compress.calibration import default_texts, read_texts
    from adapters.compress.codec import canonical_bytes
    from adapters.compress.distill import DistillConfig
    from adapters.compress.errors import CompressError
    from adapters.compress.nola import NolaCodec, NolaConfig
    from adapters.compress.peft_io import read_adapter
    from adapters.compress.pipeline import Gate
    from adapters.registry.errors import NotFound, RegistryError

    try:
        config = NolaConfig(ratio=ratio)
        gate = Gate(min_agreement=min_agreement, max_kl=max_kl, max_weight_error=max_weight_error)
        distill = DistillConfig(steps=steps)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    texts = None
    if base_model is not None:
        texts = read_texts(calibration) if calibration else default_texts()
    directories = find_adapters(paths)
    if not directories:
        raise click.ClickException(
            f"no adapter directories (with adapter_config.json) under {', '.join(map(str, paths))}"
        )
    params = {
        "ratio": ratio,
        "min_agreement": min_agreement,
        "max_weight_error": max_weight_error,
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
        try:
            known = app.registry.resolve(f"{name}@sha256:{digest}")
            if known.status != "failed":
                outcomes.append(
                    Outcome(
                        str(directory), name, "unchanged", digest, f"already {known.ref}", version=known.ref
                    )
                )
                continue
        except NotFound:
            pass  # new adapter, or new content (anything else, e.g. a bad token, stops the run)
        codec = NolaCodec(config, base_model=base_model, texts=texts, distill=distill, gate=gate)
        with tempfile.TemporaryDirectory(prefix="adapters-ci-") as tmp, reporter.task(f"compressing {name}"):
            report = codec.compress(checkpoint, Path(tmp) / "artifact")
        held = report.fidelity.get("held_out", {})
        outcome = Outcome(
            str(directory),
            name,
            "passed" if report.fidelity["gate_passed"] else "failed",
            digest,
            report.fidelity["gate"]["reason"],
            report.source_bytes,
            report.artifact_bytes,
            round(report.ratio, 2),
            report.fidelity.get("weight_rel_error"),
            held.get("agreement"),
            held.get("kl"),
            fidelity={k: v for k, v in report.fidelity.items() if k != "modules"},
        )
        if outcome.decision == "passed" and not dry_run:
            try:
                pushed = app.registry.push(
                    directory,
                    name,
                    task=task,
                    codec="nola",
                    params=params,
                    on_gate_fail="reject",
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

    settings = {"ratio": ratio, "min_agreement": min_agreement, "max_kl": max_kl, "dry_run": dry_run}
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
