"""adapters inspect: what an artifact holds, module by module."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .context import AppContext, echo_table, human_size, json_option, pass_app
from .fidelity import fidelity_lines


def _summary(path: Path) -> dict:
    from adapters.compress.artifact import CONFIG_FIELD, HEADER_KEY, decode_header
    from adapters.compress.codec import CONFIG_KEY, FORMAT_KEY, VERSION_KEY
    from adapters.compress.errors import InvalidArtifact
    from adapters.compress.stfile import read_metadata

    metadata = read_metadata(path)
    if FORMAT_KEY not in metadata:
        raise InvalidArtifact(f"{path}: not an adapter artifact")
    out = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": metadata[FORMAT_KEY],
        "format_version": metadata.get(VERSION_KEY),
        "peft_config": json.loads(metadata.get(CONFIG_KEY, "{}")),
    }
    if HEADER_KEY in metadata:
        out["nola"] = decode_header(metadata[HEADER_KEY])
        if CONFIG_KEY not in metadata:  # the transform layout keeps it in its header
            out["peft_config"] = json.loads(out["nola"].pop(CONFIG_FIELD, "{}"))
    return out


@click.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_app
def inspect(app: AppContext, artifact: Path) -> None:
    """Show an artifact: format, generator, sizes, and per module the subspace size k, coefficient
    format and errors (reads the header only; nothing is reconstructed).

    \b
    Example:
      adapters inspect my-lora.nola
    """
    info = _summary(artifact)

    def human() -> None:
        click.echo(f"{artifact}: {info['format']} v{info['format_version']}, {human_size(info['bytes'])}")
        nola = info.get("nola")
        if not nola:
            return
        gen, fid = nola["generator"], nola.get("fidelity", {})
        transform = nola.get("layout") == "transform"
        coding = (
            f"transform code, step {nola['code']['step']:.4g}, {nola['code']['bytes']} bytes"
            if transform
            else f"group size {nola['group_size']}"
        )
        click.echo(
            f"generator {gen['name']} v{gen['version']} seed {gen['seed']} fingerprint {gen['fingerprint']}; "
            f"basis {nola['basis']}, fit {nola['fit']}, {coding}"
        )
        worst = fid.get("weight_rel_error_max", 0)
        line = f"weight error {fid.get('weight_rel_error', 0):.4f} (worst {worst:.4f})"
        if "output_rel_error" in fid:
            line += f", output error {fid['output_rel_error']:.4f} (worst {fid['output_rel_error_max']:.4f})"
        click.echo(line)
        judged = {"gate": nola.get("gate"), "held_out": nola.get("held_out")}
        for label, text in fidelity_lines({k: v for k, v in judged.items() if v}):
            click.echo(f"{label} {text}")

        def sizes(entry: dict) -> str:
            kept = [k for k in entry["k"] if k]
            if not kept:
                return "dropped"
            formats = "/".join(sorted({f for k, f in zip(entry["k"], entry["format"]) if k}))
            span = f"{min(kept)}" if min(kept) == max(kept) else f"{min(kept)}-{max(kept)}"
            dropped = len(entry["k"]) - len(kept)
            return f"{span} {formats}" + (f" ({dropped} dropped)" if dropped else "")

        if transform:  # modules coded as one stream: shapes and errors, no per-row sizes
            errors = nola.get("errors") or [None] * len(nola["modules"])
            rows = [
                [m[0], m[1], f"{m[2]}x{m[3]}", f"{e:.4f}" if e is not None else None]
                for m, e in zip(nola["modules"], errors)
            ]
            echo_table(["module", "r", "in x out", "weight err"], rows)
            return
        rows = []
        for m in nola["modules"]:
            nbytes = m["A"]["codes"][1] + m["B"]["codes"][1] + 2 * (m["A"]["scales"][1] + m["B"]["scales"][1])
            errors = m.get("errors", {})
            rows.append(
                [
                    m["module"],
                    m["rank"],
                    f"{m['in']}x{m['out']}",
                    sizes(m["A"]),
                    sizes(m["B"]),
                    nbytes,
                    f"{errors.get('weight', 0):.4f}",
                    f"{errors['output']:.4f}" if "output" in errors else None,
                ]
            )
        echo_table(
            ["module", "r", "in x out", "A: k fmt", "B: k fmt", "bytes", "weight err", "output err"], rows
        )

    app.emit(info, human)
