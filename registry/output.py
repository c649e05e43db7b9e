"""Writing a pulled adapter to a folder, the same way for the embedded and the remote registry: refuse a
non-empty destination unless forced, build everything in a staging folder beside it, and only then
move the files into place, so a failed pull leaves the destination as it was."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, OutputExists
from .sweep import sweep_beside

# A stale file a forced pull removes: the adapter is always written back as safetensors.
STALE_FILES = ("adapter_model.bin",)


def write_error(out_dir: Path, exc: OSError) -> OutputError:
    """One line for a pull whose files could not be written (a full disk, a quota, a file size
    limit): the output folder and the system's reason. The staging folder goes away with it."""
    return OutputError(f"cannot write {out_dir}: {exc.strerror or exc}; nothing was written there")


def prepare_output(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExists(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExists(f"{out_dir} is not empty (use --force to overwrite the adapter files in it)")


@contextmanager
def staging_for(out_dir: Path, *, sweep_after: float | None = None) -> Iterator[Path]:
    """A temporary folder beside `out_dir` (same file system, so the final move is a rename). With
    `sweep_after`, staging folders of earlier pulls into `out_dir` that were killed more than that
    many seconds ago go first."""
    if sweep_after is not None:
        sweep_beside(out_dir, sweep_after)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(staging: Path, out_dir: Path) -> list[str]:
    """Move the files of `staging` into `out_dir`; returns their names."""
    files = sorted(p.name for p in staging.iterdir())
    try:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if not out_dir.exists():
            staging.rename(out_dir)
        else:  # --force into a folder with files: replace the adapter's files, drop a stale .bin
            for name in STALE_FILES:
                (out_dir / name).unlink(missing_ok=True)
            for name in files:
                (staging / name).replace(out_dir / name)
    except OSError as exc:
        raise OutputError(f"cannot write {out_dir}: {exc}") from None
    return files
