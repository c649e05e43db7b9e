"""adapters reconstruct: an artifact file -> a PEFT directory (offline, no registry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .context import AppContext, human_size, json_option, pass_app


@click.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="PEFT directory to write.",
)
@click.option("--force", is_flag=True, help="Replace an existing directory.")
@json_option
@pass_app
def reconstruct(app: AppContext, artifact: Path, output: Path, force: bool) -> None:
    """Rebuild the PEFT adapter an artifact stands for (any codec: nola or raw).

    The artifact's checksum, generator fingerprint and basis digests are checked first; the result
    is written as adapter_config.json + adapter_model.safetensors, the same bytes every time.

    \b
    Example:
      adapters reconstruct my-lora.nola -o ./my-lora-rebuilt
    """
    import torch

    from adapters.compress.codec import reconstruct as rebuild
    from adapters.compress.peft_io import write_adapter

    # The decoder overlaps reading and rotating on two threads of its own; the remaining passes
    # (checks, writing) are memory-bound. An OpenMP team on top only costs, and on a shared
    # machine it can cost far more than it saves (threads spin waiting for descheduled peers).
    torch.set_num_threads(1)

    if output.exists() and any(output.iterdir()) and not force:
        raise click.ClickException(f"{output} is not empty (use --force to replace it)")
    with app.reporter().task("reconstructing"):
        checkpoint = rebuild(artifact)
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapter(checkpoint, tmp)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    size = checkpoint.nbytes()
    app.emit(
        {
            "output": str(output),
            "tensors": len(checkpoint.tensors),
            "bytes": size,
            "modules": len(checkpoint.pairs),
        },
        lambda: click.echo(
            f"wrote {output}: {len(checkpoint.pairs)} LoRA modules, {len(checkpoint.tensors)} tensors, "
            f"{human_size(size)}"
        ),
    )
