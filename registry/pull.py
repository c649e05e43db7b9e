"""Pull: the PEFT files a ready version's artifact reconstructs to, from the reconstruction cache or
fetched (verified against the artifact's sha256) and decoded, written to a folder that is only touched
once everything succeeded. The numerics (`adapters.compress`) are imported only when decoding.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import folder_files
from .cache import CachedAdapter, ReconstructionCache, open_folder
from .db import Database
from .errors import StorageError, UnsupportedArtifact
from .output import install, prepare_output, staging_for, write_error
from .progress import Reporter, SilentReporter
from .refs import Ref
from .service import require_ready, resolve
from .storage import BlobStorage
from .sweep import temp_prefix


def _reconstruct_into(
    storage: BlobStorage, artifact: tuple[str, int], label: str, folder: Path, reporter: Reporter
) -> None:
    from adapters.compress.codec import reconstruct
    from adapters.compress.errors import CompressError
    from adapters.compress.peft_io import write_adapter

    digest, size = artifact
    staged = folder / ".artifact"
    with reporter.task("downloading", total=size, unit="bytes") as advance:
        storage.get_file(digest, staged, progress=advance)
    with reporter.task("reconstructing"):
        try:
            checkpoint = reconstruct(staged)
        except CompressError as exc:
            raise UnsupportedArtifact(f"{label}: its artifact cannot be decoded: {exc}") from None
        staged.unlink()
        write_adapter(checkpoint, folder)


def materialize(
    storage: BlobStorage,
    artifact: tuple[str, int],
    *,
    label: str,
    cache: ReconstructionCache | None = None,
    reporter: Reporter | None = None,
    tmp_dir: Path | None = None,
) -> CachedAdapter:
    """The PEFT files an artifact reconstructs to, open for reading: from the cache when it holds
    them, else fetched (verified against the artifact's sha256), decoded and, with a cache, kept.
    Close the result when done."""
    reporter = reporter or SilentReporter()
    digest = artifact[0]
    if cache is not None and cache.enabled:
        found = cache.get(digest)
        if found is not None:
            return found
        with cache.lock(digest):
            found = cache.get(digest)  # made by another thread while we waited
            if found is not None:
                return found
            with _writing(cache.root):
                folder = cache.staging()
            try:
                with _writing(cache.root):
                    _reconstruct_into(storage, artifact, label, folder, reporter)
                    return cache.put(digest, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    with (
        _writing(tmp_dir),
        tempfile.TemporaryDirectory(prefix=temp_prefix("reconstruct"), dir=tmp_dir) as tmp,
    ):
        _reconstruct_into(storage, artifact, label, Path(tmp), reporter)
        return open_folder(Path(tmp), digest)


@contextmanager
def _writing(where: Path | None) -> Iterator[None]:
    """OSErrors of writing reconstructed files (a full disk, a quota) as one StorageError naming the
    folder: the server's disk, not the caller's input, is what failed."""
    try:
        yield
    except OSError as exc:
        folder = where if where is not None else Path(tempfile.gettempdir())
        raise StorageError(
            f"cannot write reconstructed files under {folder}: {exc.strerror or exc}"
        ) from None


def pull(
    db: Database,
    storage: BlobStorage,
    ref: str | Ref,
    out_dir: Path,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    cache: ReconstructionCache | None = None,
    tmp_dir: Path | None = None,
    sweep_after: float | None = None,
) -> tuple[int, list[str]]:
    """Write the PEFT directory of the version `ref` names to `out_dir`. The artifact is verified
    against its sha256 before it is decoded (and cached reconstructions as they are copied), and
    `out_dir` is only touched once everything succeeded (with `sweep_after`, stale staging folders of
    killed pulls beside it are removed). Returns the version id and the files."""
    out_dir = Path(out_dir)
    with db.transaction() as session:
        version = require_ready(resolve(session, ref))
        version_id, label = version.id, version.ref
        assert version.artifact_digest is not None and version.artifact_size is not None
        artifact = (version.artifact_digest, version.artifact_size)
        stored = [f.record() for f in version.files]
    prepare_output(out_dir, force)
    with staging_for(out_dir, sweep_after=sweep_after) as staging:
        with materialize(
            storage, artifact, label=label, cache=cache, reporter=reporter, tmp_dir=tmp_dir
        ) as adapter:
            try:
                for cached in adapter.files.values():
                    cached.copy_to(staging / cached.name)
                folder_files.fetch(storage, stored, staging)
            except OSError as exc:  # a full disk, a quota, a file size limit
                raise write_error(out_dir, exc) from None
        return version_id, install(staging, out_dir)
