"""The client's download cache (`$XDG_CACHE_HOME/adapters`, else `~/.cache/adapters`): the PEFT files
remote pulls downloaded, content-addressed by their sha256, the transfers under way, and what each
pulled ref named, so a pull of content already here costs no transfer and `--offline` works with no
server at all.

    <root>/sha256/<2 hex>/<digest>                     a verified file
    <root>/partial/<digest>.part                       a transfer under way, or cut (resumed with Range;
                                                       removed when no pull continued it for a week)
    <root>/refs/<ns>/<name>/<number>.json              a version's view and its files' digests
    <root>/refs/<ns>/<name>/@<alias> (and @latest)     the number the alias named at the last online pull

Every step is a rename, so processes may share the cache. Files are checked against their digest
whenever they are read; when the files outgrow `max_bytes`, the least recently used go first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import NotCached
from .output import install, prepare_output, staging_for, write_error
from .refs import Ref, check_digest
from .schemas import PullResult, VersionView
from .storage import sha256_file

STALE_PART_SECONDS = 7 * 24 * 3600


class ClientCache:
    def __init__(self, root: str | Path, max_bytes: int = 10 * 1024**3) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------------------------- files

    def blob(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def partial(self, digest: str) -> Path:
        """Where the transfer of the file with this digest is kept until it is whole and checked."""
        check_digest(digest)
        folder = self.root / "partial"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{digest}.part"

    def copy_out(self, digest: str, dest: Path) -> bool:
        """Copy the cached file with this digest to `dest`, checked; False when it is not cached (a
        cached file that fails its check is removed)."""
        path = self.blob(digest)
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError:
            return False
        if sha256_file(dest)[0] != digest:
            path.unlink(missing_ok=True)
            dest.unlink()
            return False
        os.utime(path)  # recently used
        return True

    def add(self, part: Path, digest: str) -> Path:
        """Move a finished, checked transfer in as the file for `digest`."""
        path = self.blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        part.replace(path)
        return path

    def shrink(self) -> None:
        """Remove the least recently used files until the cache fits its bound, and transfers cut
        more than a week ago that no pull continued."""
        stale = time.time() - STALE_PART_SECONDS
        for part in (self.root / "partial").glob("*.part*"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < stale:
                    part.unlink()
        files = []
        for path in (self.root / "sha256").glob("*/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    # -------------------------------------------------------------------------------------- refs

    def _refs(self, adapter: str) -> Path:
        return self.root / "refs" / adapter

    def record(self, ref: Ref, version: VersionView, files: dict[str, str]) -> None:
        """Remember what `ref` named and the digests of that version's files (name -> sha256)."""
        folder = self._refs(version.adapter)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"version": version.to_json(), "files": files}
        _write(folder / f"{version.number}.json", json.dumps(record, sort_keys=True))
        if ref.alias is not None or ref.is_latest:
            _write(folder / f"@{ref.alias or 'latest'}", str(version.number))

    def lookup(self, ref: Ref) -> tuple[VersionView, dict[str, str]]:
        """The version and file digests an earlier online pull recorded for `ref`."""
        folder = self._refs(str(ref.adapter))
        number = ref.number
        if ref.alias is not None or ref.is_latest:
            try:
                number = int((folder / f"@{ref.alias or 'latest'}").read_text())
            except (FileNotFoundError, ValueError):
                number = None
        records = []
        if number is not None:
            records = [folder / f"{number}.json"]
        elif ref.digest is not None:
            records = sorted(folder.glob("*.json"))
        for path in records:
            try:
                record = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            version = VersionView.model_validate(record["version"])
            if ref.digest is None or ref.digest in (
                version.content_digest,
                version.source_digest,
                version.artifact_digest,
            ):
                return version, dict(record["files"])
        raise NotCached(f"{ref} is not in the download cache {self.root}: pull it once online first")

    def pull(self, ref: str | Ref, out_dir: str | Path, *, force: bool = False) -> PullResult:
        """Write the version `ref` named at the last online pull into `out_dir`, from the cache only."""
        parsed = ref if isinstance(ref, Ref) else Ref.parse(ref)
        version, files = self.lookup(parsed)
        out = Path(out_dir)
        prepare_output(out, force)
        with staging_for(out) as staging:
            try:
                for name, digest in sorted(files.items()):
                    if not self.copy_out(digest, staging / name):
                        raise NotCached(
                            f"{name} of {version.ref} (sha256:{digest}) is no longer in the download "
                            f"cache {self.root}: pull it again online"
                        )
            except OSError as exc:
                raise write_error(out, exc) from None
            names = install(staging, out)
        return PullResult(version=version, path=str(out_dir), files=names)


def _write(path: Path, text: str) -> None:
    """Write a small file whole or not at all (a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    Path(tmp).replace(path)
