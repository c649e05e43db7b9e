"""Blob garbage collection: a plain function a cron job, the CLI (`adapters gc`) or a job runner calls.

A blob is garbage when no version references it (as its source or its artifact) and it has been so
for the whole grace period:

- a blob row no version references, released (by a deleted version, lifecycle.py) or created more
  than `grace` seconds ago: its row is deleted, then its object, in one transaction that holds the
  row's lock. A push of the same content meanwhile either holds the row first (its new version's
  foreign key locks it, and the collector skips it) or waits for the collector, writes the row again
  and, finding the object gone, uploads it again (`restore`);
- an object in the store with no row, written more than `grace` seconds ago: what a push or codec run
  stored before it died (a live push writes its row within seconds of its upload, well inside any
  sensible grace period, and stores the object again if it finds it gone);
- incomplete S3 multipart uploads and partial files older than `grace`: the store's own sweep
  (storage.sweep, the same one `adapters maintenance` runs).

With `dry_run`, nothing is deleted and the report says what would be.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .db import Database
from .errors import RegistryError
from .models import Blob, Version, VersionFile
from .repository import db_now
from .storage import BlobStorage
from .sweep import temp_prefix

log = logging.getLogger("adapters.gc")
DEFAULT_GRACE_SECONDS = 24 * 3600
BATCH = 500
PARALLEL = 16  # object deletions in flight (S3 has no cheaper way that every store offers)


@dataclass
class GcReport:
    blobs: list[str] = field(default_factory=list)  # digests deleted (or, dry, to delete)
    bytes: int = 0  # their size, where the row knew it
    orphans: list[str] = field(default_factory=list)  # stored objects that had no row
    uploads: list[str] = field(default_factory=list)  # multipart uploads aborted, partial files removed
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "blobs": self.blobs,
            "bytes": self.bytes,
            "orphans": self.orphans,
            "uploads": self.uploads,
            "errors": self.errors,
            "dry_run": self.dry_run,
        }


def referenced(digest: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """Whether some row references the blob `digest`. Every column that points at a blob belongs
    here."""
    return sa.or_(
        sa.exists().where(sa.or_(Version.source_digest == digest, Version.artifact_digest == digest)),
        sa.exists().where(VersionFile.sha256 == digest),
    )


def _unreferenced(session: Session, cutoff: dt.datetime, after: str) -> list[tuple[str, int]]:
    released = sa.func.coalesce(Blob.released_at, Blob.created_at)
    rows = session.execute(
        sa.select(Blob.sha256, Blob.size)
        .where(Blob.sha256 > after, released < cutoff, ~referenced(Blob.sha256))
        .order_by(Blob.sha256)
        .limit(BATCH)
    )
    return [(str(d), int(s)) for d, s in rows]


def _collect_batch(
    db: Database, storage: BlobStorage, digests: list[str], cutoff: dt.datetime, report: GcReport
) -> None:
    """Delete unreferenced blobs (rows, then objects) under their row locks, in one transaction.
    Rows referenced or released again meanwhile, or held by another transaction (a push's new
    version locks the blob row it references), are left alone."""
    try:
        with db.transaction() as session:
            blobs = session.scalars(
                sa.select(Blob)
                .where(
                    Blob.sha256.in_(digests),
                    sa.func.coalesce(Blob.released_at, Blob.created_at) < cutoff,
                    ~referenced(Blob.sha256),
                )
                .with_for_update(skip_locked=True)
            ).all()
            found = [(blob.sha256, blob.size) for blob in blobs]
            for blob in blobs:
                session.delete(blob)
            # The rows' deletion is flushed first: on SQLite it fails here, before any object is
            # touched, if a version referencing one was committed meanwhile. A failure below rolls
            # back: the rows stay, and the next run retries.
            session.flush()
            _delete_objects(storage, [digest for digest, _ in found])
    except RegistryError as exc:
        report.errors.append(f"{len(digests)} blobs from sha256:{digests[0]}: {exc}")
        return
    report.blobs.extend(digest for digest, _ in found)
    report.bytes += sum(size for _, size in found)


def _delete_objects(storage: BlobStorage, digests: list[str]) -> None:
    """Delete objects a few at a time (one request each on S3); the first failure propagates."""
    if not digests:
        return
    with ThreadPoolExecutor(min(PARALLEL, len(digests))) as pool:
        for _ in pool.map(storage.delete, digests):
            pass


def restore(storage: BlobStorage, digest: str, data: bytes, tmp_dir: Path | None = None) -> None:
    """Upload a push's content again if a collector deleted its object between the push's upload
    and its row. Called after the push's version row is written, whose foreign key locks the blob row
    against collectors until the push commits."""
    if storage.exists(digest):
        return
    log.warning("sha256:%s was collected while a push re-used it: storing it again", digest)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("push"), dir=tmp_dir) as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(data)
        storage.put_file(digest, path)


def collect_garbage(
    db: Database,
    storage: BlobStorage,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
) -> GcReport:
    """Delete blobs no row has referenced for `grace_seconds`, stored objects without a row older
    than that, and incomplete uploads older than that (see the module docstring)."""
    if grace_seconds < 0:
        raise ValueError("the grace period cannot be negative")
    report = GcReport(dry_run=dry_run)
    with db.reading() as session:
        cutoff = db_now(session) - dt.timedelta(seconds=grace_seconds)
    after = ""
    while True:
        with db.reading() as session:
            batch = _unreferenced(session, cutoff, after)
        if not batch:
            break
        after = batch[-1][0]
        if dry_run:
            report.blobs.extend(digest for digest, _ in batch)
            report.bytes += sum(size for _, size in batch)
        else:
            _collect_batch(db, storage, [digest for digest, _ in batch], cutoff, report)

    _collect_orphans(db, storage, time.time() - grace_seconds, report)
    if not dry_run:
        swept = storage.sweep(grace_seconds)
        report.uploads.extend(swept.removed)
        report.errors.extend(swept.errors)
    if report.blobs or report.orphans or report.uploads:
        log.info(
            "garbage collection %s %d blobs (%d bytes), %d orphans, %d uploads",
            "found" if dry_run else "removed",
            len(report.blobs),
            report.bytes,
            len(report.orphans),
            len(report.uploads),
        )
    return report


def _collect_orphans(db: Database, storage: BlobStorage, cutoff: float, report: GcReport) -> None:
    """Stored objects older than `cutoff` (epoch seconds) that no blob row records."""
    try:
        old = [digest for digest, written in storage.list_blobs() if written < cutoff]
    except RegistryError as exc:
        report.errors.append(str(exc))
        return
    for start in range(0, len(old), BATCH):
        chunk = old[start : start + BATCH]
        with db.reading() as session:
            known = set(session.scalars(sa.select(Blob.sha256).where(Blob.sha256.in_(chunk))))
        unknown = [digest for digest in chunk if digest not in known]
        if report.dry_run:
            report.orphans.extend(unknown)
            continue
        # A push that re-uses one of these meanwhile finds it gone and stores it again (`restore`).
        with ThreadPoolExecutor(PARALLEL) as pool:
            for digest, error in zip(unknown, pool.map(_try_delete(storage), unknown), strict=True):
                if error is None:
                    report.orphans.append(digest)
                else:
                    report.errors.append(f"sha256:{digest}: {error}")


def _try_delete(storage: BlobStorage) -> Callable[[str], str | None]:
    def delete(digest: str) -> str | None:
        try:
            storage.delete(digest)
        except RegistryError as exc:
            return str(exc)
        return None

    return delete
