"""A bounded folder cache of reconstructed PEFT files, keyed by the artifact's sha256.

Reconstruction is deterministic (the same artifact gives the same bytes), so an entry made once serves
every later pull of that artifact, from any version that shares it. Each entry is a folder

    <root>/<artifact sha256>/adapter_config.json
                            /adapter_model.safetensors
                            /manifest.json     {"files": {name: {"sha256": ..., "size": ...}}}

made in a temporary folder and renamed into place, so readers see whole entries or none. Reads are
verified: `CachedFile.chunks` hashes a file the first time this process reads it, and again whenever
the file's size, inode or mtime change; a file whose bytes do not match its manifest evicts the entry
and raises BlobCorrupted. (Hashing every read would halve the throughput of repeated pulls; the
remote client checks every download against the digest sent with it anyway.) Reading an entry refreshes its
manifest's mtime; when the entries outgrow `max_bytes`, the least recently used go first. Several
processes may share a root: every step is a rename or a removal of a whole folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BlobCorrupted
from .refs import check_digest
from .storage import sha256_file

log = logging.getLogger("adapters.cache")
MANIFEST = "manifest.json"
CHUNK = 1024 * 1024
VERIFIED_MEMORY = 4096


@dataclass
class CachedFile:
    """One file of an entry, opened: it stays readable even if the entry is evicted meanwhile."""

    name: str
    sha256: str
    size: int
    handle: BinaryIO
    artifact_digest: str
    # Called with the artifact digest when the bytes turn out corrupted (the cache evicts the entry).
    on_corrupt: Callable[[str], None] | None = None
    # This process hashed these very bytes already (same file, unchanged since): reads skip the hash.
    trusted: bool = False
    # Called after a read whose hash matched.
    on_verified: Callable[[], None] | None = None

    def chunks(self) -> Iterator[bytes]:
        """The bytes in chunks, then the file is closed. Unless trusted, the last chunk is held back
        until the sha256 is checked: on a mismatch BlobCorrupted is raised instead, so a streaming
        reader's client gets a short body, never a whole wrong one."""
        if self.trusted:
            try:
                self.handle.seek(0)
                while chunk := self.handle.read(CHUNK):
                    yield chunk
            finally:
                self.handle.close()
            return
        digest, size, held = hashlib.sha256(), 0, b""
        try:
            self.handle.seek(0)
            while chunk := self.handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if held:
                    yield held
                held = chunk
        finally:
            self.handle.close()
        if digest.hexdigest() != self.sha256 or size != self.size:
            if self.on_corrupt is not None:
                self.on_corrupt(self.artifact_digest)
            raise BlobCorrupted(
                f"reconstructed {self.name} of artifact sha256:{self.artifact_digest} is corrupted"
            )
        if self.on_verified is not None:
            self.on_verified()
        if held:
            yield held

    def range_chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes `start` to `end` (inclusive) in chunks, then the file is closed. Unless trusted, the
        whole file is hashed first (read once more, locally), so a corrupted file raises BlobCorrupted
        before any byte of the range is given out."""
        try:
            if not self.trusted:
                digest, size = hashlib.sha256(), 0
                self.handle.seek(0)
                while chunk := self.handle.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                if digest.hexdigest() != self.sha256 or size != self.size:
                    if self.on_corrupt is not None:
                        self.on_corrupt(self.artifact_digest)
                    raise BlobCorrupted(
                        f"reconstructed {self.name} of artifact sha256:{self.artifact_digest} is corrupted"
                    )
                if self.on_verified is not None:
                    self.on_verified()
            self.handle.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := self.handle.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            self.handle.close()

    def close(self) -> None:
        self.handle.close()

    def copy_to(self, dest: Path) -> None:
        """Write the file to `dest`, checking its sha256 on the way."""
        with Path(dest).open("wb") as out:
            for chunk in self.chunks():
                out.write(chunk)


@dataclass
class CachedAdapter:
    """An entry checked out of the cache: its files, open. Close it (or use `with`) when done; a file
    read to the end with `chunks` is closed already."""

    artifact_digest: str
    files: dict[str, CachedFile]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def __enter__(self) -> CachedAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_folder(
    folder: Path, digest: str, *, on_corrupt: Callable[[str], None] | None = None
) -> CachedAdapter:
    """Hash and open the files of a reconstructed PEFT directory (they stay readable after the folder
    is removed)."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name == MANIFEST:
            continue
        sha, size = sha256_file(path)
        # Hashed just now, from the same file: its reads need not hash it again.
        files[path.name] = CachedFile(path.name, sha, size, path.open("rb"), digest, on_corrupt, trusted=True)
    return CachedAdapter(digest, files)


class ReconstructionCache:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self._locks = [threading.Lock() for _ in range(64)]
        # Files this process has hashed, by (artifact, name, device, inode, size, mtime): unchanged
        # files are not hashed again on every read (clients check every download themselves).
        self._verified: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self._verified_guard = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lock(self, digest: str) -> threading.Lock:
        """A lock for an artifact (striped), so threads of one process reconstruct an artifact once."""
        return self._locks[int(digest[:8], 16) % len(self._locks)]

    def _entry(self, digest: str) -> Path:
        return self.root / check_digest(digest)

    def get(self, digest: str) -> CachedAdapter | None:
        """Check out the entry for an artifact, or None. Sizes are checked here, digests as the files
        are read."""
        entry = self._entry(digest)
        opened: list[BinaryIO] = []
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            files = {}
            for name, meta in sorted(manifest["files"].items()):
                handle = (entry / name).open("rb")
                opened.append(handle)
                size = int(meta["size"])
                stat = os.fstat(handle.fileno())
                if stat.st_size != size:
                    raise ValueError(f"{name}: size mismatch")
                signature = (digest, name, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                files[name] = CachedFile(
                    name,
                    str(meta["sha256"]),
                    size,
                    handle,
                    digest,
                    self.evict,
                    trusted=self._is_verified(signature),
                    on_verified=lambda signature=signature: self._mark_verified(signature),
                )
            os.utime(entry / MANIFEST)
        except FileNotFoundError:
            for handle in opened:
                handle.close()
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            for handle in opened:
                handle.close()
            log.warning("evicting a broken cache entry for sha256:%s", digest)
            self.evict(digest)
            return None
        return CachedAdapter(digest, files)

    def _is_verified(self, signature: tuple[object, ...]) -> bool:
        with self._verified_guard:
            if signature in self._verified:
                self._verified.move_to_end(signature)
                return True
            return False

    def _mark_verified(self, signature: tuple[object, ...]) -> None:
        with self._verified_guard:
            self._verified[signature] = None
            while len(self._verified) > VERIFIED_MEMORY:
                self._verified.popitem(last=False)

    def put(self, digest: str, folder: Path) -> CachedAdapter:
        """Move the files of `folder` (a reconstructed PEFT directory on the cache's file system, see
        `staging`) in as the entry for `digest`, and check it out. If a concurrent writer got there
        first, theirs stays (the bytes are the same). Then old entries are evicted past the bound."""
        adapter = open_folder(folder, digest, on_corrupt=self.evict)
        manifest = {
            "artifact": digest,
            "files": {f.name: {"sha256": f.sha256, "size": f.size} for f in adapter.files.values()},
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        try:
            folder.rename(self._entry(digest))
            for f in adapter.files.values():  # the renamed files are the ones hashed above
                stat = os.fstat(f.handle.fileno())
                self._mark_verified(
                    (digest, f.name, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                )
        except OSError:  # already there
            shutil.rmtree(folder, ignore_errors=True)
        self.shrink()
        return adapter

    def staging(self) -> Path:
        """A new empty folder on the cache's file system, for `put` to rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def evict(self, digest: str) -> None:
        entry = self._entry(digest)
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        try:
            entry.rename(trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, digest) of every entry."""
        found = []
        if not self.root.is_dir():
            return found
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                manifest = entry / MANIFEST
                used = manifest.stat().st_mtime
                size = sum(int(m["size"]) for m in json.loads(manifest.read_text())["files"].values())
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((used, size, entry.name))
        return found

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def shrink(self) -> None:
        """Evict least recently used entries until the cache fits its bound."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        for _, size, digest in entries:
            if total <= self.max_bytes:
                break
            self.evict(digest)
            total -= size
