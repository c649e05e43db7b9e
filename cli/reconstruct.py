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

    from adapters.compress.codec import write_reconstructed

    # The decoder overlaps reading and rotating on two threads of its own; the remaining passes
    # (checks, writing) are memory-bound. An OpenMP team on top only costs, and on a shared
    # machine it can cost far more than it saves (threads spin waiting for descheduled peers).
    torch.set_num_threads(1)

    if output.exists() and any(output.iterdir()) and not force:
        raise click.ClickException(f"{output} is not empty (use --force to replace it)")
    # Written into a sibling directory and renamed at the end: a failure leaves nothing behind, and
    # an existing output is replaced only by a complete one.
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with app.reporter().task("reconstructing"):
            written = write_reconstructed(artifact, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    size = written.nbytes
    app.emit(
        {
            "output": str(output),
            "tensors": written.tensors,
            "bytes": size,
            "modules": written.modules,
        },
        lambda: click.echo(
            f"wrote {output}: {written.modules} LoRA modules, {written.tensors} tensors, {human_size(size)}"
        ),
    )
