"""How commands print what a compression cost: sizes (whole files), errors, held-out agreement, the
gate's verdict and basis, the size search, and a fallback to the lossless source. Used by `show`,
`compress` and `ci`, from a fidelity record (a version's, or a codec report's)."""

from __future__ import annotations

from typing import Any

from .context import human_size


def size_line(f: dict[str, Any]) -> str | None:
    if "ratio" not in f:
        return None
    line = f"{human_size(f.get('source_bytes'))} -> {human_size(f.get('artifact_bytes'))} ({f['ratio']:.1f}x)"
    if f.get("lora_ratio"):
        line += f"; LoRA factors {f['lora_ratio']:.1f}x"
    return line


def gate_line(f: dict[str, Any]) -> str | None:
    gate = f.get("gate")
    if not isinstance(gate, dict):
        return None
    verdict = "passed" if gate.get("passed", f.get("gate_passed")) else "missed"
    basis = gate.get("basis", "?")
    if gate.get("bound") is not None:
        basis += f", lower bound {gate['bound']:.4f} over {gate.get('predictions')} predictions"
    elif gate.get("data_free"):
        basis += ", data-free"
    return f"{verdict} on {basis}: {gate.get('reason')}"


def search_line(f: dict[str, Any]) -> str | None:
    search = f.get("search")
    if not isinstance(search, dict) or not search.get("attempts"):
        return None
    tried = []
    for a in search["attempts"]:
        outcome = (
            "passed" if a.get("passed") else ("out of reach" if a.get("artifact_bytes") is None else "missed")
        )
        tried.append(f"{a['ratio']:g}x {a.get('method', '')} {outcome}".replace("  ", " "))
    return f"up to {search.get('max_ratio'):g}x: " + ", ".join(tried)


def fidelity_lines(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines for a fidelity record."""
    lines: list[tuple[str, str]] = []
    if f.get("fallback"):
        attempt = f.get("attempt") or {}
        lines.append(
            (
                "stored as",
                f"{f['fallback']} (lossless): the {attempt.get('codec', '?')} attempt missed the gate",
            )
        )
        shown = attempt
    else:
        shown = f
    size = size_line(f)
    if size:
        lines.append(("size", size))
    if shown is not f and size_line(shown):
        lines.append(("attempt", size_line(shown) or ""))
    if "weight_rel_error" in shown:
        worst = shown.get("weight_rel_error_max", 0)
        error = f"weight {shown['weight_rel_error']:.4f} (worst module {worst:.4f})"
        if "output_rel_error" in shown:
            error += (
                f", output {shown['output_rel_error']:.4f} (worst {shown.get('output_rel_error_max', 0):.4f})"
            )
        lines.append(("error", error))
    held = shown.get("held_out") or {}
    if "agreement" in held:
        lines.append(
            (
                "agreement",
                f"{held['agreement']:.4f}, KL {held['kl']:.2e} ({held['predictions']} held-out predictions)",
            )
        )
    distill = shown.get("distill")
    if distill:
        lines.append(
            (
                "distilled",
                f"{distill.get('steps_run', distill.get('steps'))} steps on {distill.get('device')}, "
                f"kept {distill.get('kept')} ({distill.get('stopped', 'steps')})",
            )
        )
    for label, line in (("gate", gate_line(f) or gate_line(shown)), ("search", search_line(shown))):
        if line:
            lines.append((label, line))
    setup = f.get("setup") or {}
    for note in (setup.get("without_model"), setup.get("note")):
        if note:
            lines.append(("note", note))
    return lines
