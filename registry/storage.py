"""Content-addressed blob storage behind a small protocol, and its local-folder backend (the S3 backend
is s3_storage.py; storage_url.py picks one from a URL).

A blob's key is its address, `sha256/<first two hex digits>/<hex>`, under the store's prefix. Writes are
atomic (a folder store renames a finished temporary file; S3 makes an object visible only when its
upload completes). Every read is verified: the bytes are hashed on the way to the caller's file, and a
mismatch raises BlobCorrupted and leaves nothing behind. Each backend translates the errors of its
underlying client into the registry's errors.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from .errors import BlobCorrupted, BlobNotFound, StorageError
from .refs import check_digest
from .sweep import SweepReport, sweep_folder

# Called with the number of bytes just transferred.
ByteProgress = Callable[[int], None]
CHUNK = 1024 * 1024


class BlobStorage(Protocol):
    def exists(self, digest: str) -> bool:
        """True when the blob is stored (its content is not checked)."""
        ...

    def put_file(self, digest: str, path: Path, *, progress: ByteProgress | None = None) -> None:
        """Store the file at `path` under `digest` (a no-op when already stored)."""
        ...

    def get_file(self, digest: str, dest: Path, *, progress: ByteProgress | None = None) -> int:
        """Write the blob to `dest` after checking its sha256; returns its size in bytes. An OSError
        of writing `dest` (a full disk) propagates as it is: the caller's file, not the store, failed."""
        ...

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes in chunks, for streaming. The last chunk is held back until the sha256 is
        checked; a mismatch raises BlobCorrupted instead (a streaming reader aborts, so its client
        sees a short body, never a whole wrong one). Missing blobs raise BlobNotFound at once."""
        ...

    def delete(self, digest: str) -> None:
        """Remove the blob if present."""
        ...

    def ping(self) -> None:
        """Raise StorageError unless the store is reachable (readiness checks)."""
        ...

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob's digest and when it was written (seconds since the epoch), for
        garbage collection (gc.py)."""
        ...

    def sweep(self, older_than: float) -> SweepReport:
        """Remove what interrupted writes left behind more than `older_than` seconds ago (partial
        files, incomplete multipart uploads); finished blobs are never touched."""
        ...

    def describe(self) -> str:
        """Where the blobs live, for messages."""
        ...


def blob_key(digest: str) -> str:
    check_digest(digest)
    return f"sha256/{digest[:2]}/{digest}"


def sha256_file(path: Path) -> tuple[str, int]:
    """The sha256 hex digest and size of a file."""
    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: IO[bytes], dst: IO[bytes], progress: ByteProgress | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return digest.hexdigest(), size


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    with src:
        while chunk := src.read(CHUNK):
            yield chunk


def verified_chunks(digest: str, chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """Pass chunks through, holding the last one back until the sha256 is checked."""
    hasher, held = hashlib.sha256(), b""
    for chunk in chunks:
        hasher.update(chunk)
        if held:
            yield held
        held = chunk
    actual = hasher.hexdigest()
    if actual != digest:
        raise BlobCorrupted(f"blob sha256:{digest} in {where} is corrupted (its bytes hash to {actual})")
    if held:
        yield held


# What `temp_beside` makes: .<final name>.<random>.part
PART_FILE = re.compile(r"\..+\.[A-Za-z0-9_]+\.part")
DIGEST = re.compile(r"[0-9a-f]{64}")


def temp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    return Path(name)


class LocalBlobStorage:
    """Blobs as files under a root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def describe(self) -> str:
        return str(self.root)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_file(self, digest: str, path: Path, *, progress: ByteProgress | None = None) -> None:
        final = self.path(digest)
        if final.is_file():
            return
        try:
            tmp = temp_beside(final)
            try:
                with Path(path).open("rb") as src, tmp.open("wb") as dst:
                    actual, _ = _copy_hashing(src, dst, progress)
                    dst.flush()
                    os.fsync(dst.fileno())
                if actual != digest:
                    raise BlobCorrupted(
                        f"refusing to store {path} as sha256:{digest}: its sha256 is {actual}"
                    )
                tmp.replace(final)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write blob sha256:{digest} under {self.root}: {exc}") from exc

    def get_file(self, digest: str, dest: Path, *, progress: ByteProgress | None = None) -> int:
        source = self.path(digest)
        dest = Path(dest)
        try:
            src = source.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob sha256:{digest} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
        tmp = temp_beside(dest)
        try:
            hasher, size = hashlib.sha256(), 0
            with src, tmp.open("wb") as dst:
                while True:
                    try:
                        chunk = src.read(CHUNK)
                    except OSError as exc:
                        raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
                    if not chunk:
                        break
                    hasher.update(chunk)
                    dst.write(chunk)  # an OSError here is the destination's
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
            actual = hasher.hexdigest()
            if actual != digest:
                raise BlobCorrupted(
                    f"blob sha256:{digest} in {self.root} is corrupted (its bytes hash to {actual})"
                )
            tmp.replace(dest)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        try:
            src = self.path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob sha256:{digest} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
        return verified_chunks(digest, _read_chunks(src), self.describe())

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        try:
            folders = sorted(p for p in (self.root / "sha256").iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        for folder in folders:
            for path in folder.iterdir():
                if DIGEST.fullmatch(path.name) and path.name.startswith(folder.name):
                    try:
                        yield path.name, path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted meanwhile

    def sweep(self, older_than: float) -> SweepReport:
        """Stale `.part` files of writes that never finished, in every fan-out folder."""
        report = SweepReport()
        try:
            folders = [p for p in (self.root / "sha256").iterdir() if p.is_dir()]
        except FileNotFoundError:
            return report
        for folder in folders:
            report.extend(sweep_folder(folder, PART_FILE, older_than))
        return report

    def ping(self) -> None:
        if not (self.root.is_dir() or self.root.parent.is_dir()) or not os.access(
            self.root if self.root.is_dir() else self.root.parent, os.W_OK
        ):
            raise StorageError(f"blob folder {self.root} is not writable")
