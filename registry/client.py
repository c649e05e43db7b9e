"""The registry as one object: a database and a blob store, with one transaction per operation.

`LocalRegistry` runs the services in-process: embedded (SQLite + a folder, the default) or against
PostgreSQL and S3 directly. With inline compression (embedded, or ADAPTERS_COMPRESSION=inline) the
codec runs right after a push; otherwise the version waits, pending, for a worker. `RemoteRegistry`
(remote.py) offers the same methods over the HTTP API; both follow the `Registry` protocol
(client_protocol.py). Every method returns views (`schemas`), never ORM objects.

This module holds what the operations share: construction from settings, the schema check, sweeping
leftovers, running and resuming inline compressions, and version views. The operations themselves are
mixins by concern: write_client.py (push, process, wait, aliases, yank), read_client.py (pull,
resolve, list, show, downloads), admin_client.py (workers, jobs, tokens), lifecycle_client.py
(delete, retention, garbage collection, labels) and webhook_client.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import processing, queue, service, tokens, workers
from .admin_client import AdminMethods
from .cache import ReconstructionCache
from .codecs import CodecEnvironment, import_codec_modules
from .db import Database, retry_read
from .lifecycle_client import LifecycleMethods
from .metrics import JobMetrics
from .models import Version
from .progress import Reporter
from .push import DEFAULT_CODEC
from .queue_repository import QUEUED
from .read_client import ReadMethods
from .recompress_client import RecompressMethods
from .refs import Ref
from .schemas import VersionView
from .settings import Settings
from .storage import BlobStorage, LocalBlobStorage
from .storage_url import storage_from_url
from .sweep import SweepReport, sweep_cache, sweep_temp
from .version_repository import VersionRepository
from .webhook_client import WebhookMethods
from .write_client import WriteMethods

SWEPT_MARKER = ".swept"  # in the temporary folder: when leftovers were last swept
log = logging.getLogger("adapters.registry")


class LocalRegistry(
    WriteMethods, ReadMethods, AdminMethods, LifecycleMethods, WebhookMethods, RecompressMethods
):
    def __init__(
        self,
        database: Database,
        storage: BlobStorage,
        *,
        max_upload_bytes: int | None = None,
        auto_upgrade: bool = False,
        inline: bool = True,
        cache: ReconstructionCache | None = None,
        lease_seconds: float = 60,
        device: str | None = None,
        codec_modules: list[str] | None = None,
        user: str | None = None,
        environment: CodecEnvironment | None = None,
        default_codec: str = DEFAULT_CODEC,
        tmp_dir: Path | None = None,
        sweep_after: float = 24 * 3600,
        maintenance_interval: float = 15 * 60,
        worker_live_seconds: float = 30,
        capability_wait_seconds: float = 300,
    ) -> None:
        self.db = database
        self.default_codec = default_codec
        self.storage = storage
        self.max_upload_bytes = max_upload_bytes
        self.auto_upgrade = auto_upgrade
        self.inline = inline
        self.cache = cache
        self.lease_seconds = lease_seconds
        self.device = device
        self.codec_modules = list(codec_modules or [])
        self.environment = environment
        self.worker_live_seconds = worker_live_seconds
        self.capability_wait_seconds = capability_wait_seconds
        self.principal = tokens.Principal.local(user)
        self.job_metrics: JobMetrics | None = None  # inline runs report here when set
        # Temporary folders of this registry's work (None: the system's), and when leftovers are stale.
        self.tmp_dir = tmp_dir
        self.sweep_after = sweep_after
        self.maintenance_interval = maintenance_interval
        # Tells the user what the registry did on its own (the CLI prints it on stderr).
        self.notify: Callable[[str], None] = log.warning
        self._schema_checked = False

    @classmethod
    def from_settings(cls, settings: Settings, *, user: str | None = None) -> LocalRegistry:
        """The registry the settings describe. An embedded (SQLite) registry creates or upgrades its
        schema on first use; a PostgreSQL one must be upgraded explicitly (`adapters db upgrade`)."""
        pool = (
            {}
            if settings.embedded
            else {"pool_size": settings.db_pool_size, "max_overflow": settings.db_pool_size}
        )
        return cls(
            Database(settings.database_url, **pool),
            storage_from_url(settings.storage_url),
            max_upload_bytes=settings.max_upload_bytes,
            auto_upgrade=settings.embedded,
            inline=settings.inline_compression,
            cache=ReconstructionCache(settings.cache_dir, settings.cache_max_bytes),
            lease_seconds=settings.worker_lease_seconds,
            device=settings.device,
            codec_modules=settings.codec_modules,
            user=user,
            environment=CodecEnvironment.from_settings(settings),
            default_codec=settings.default_codec,
            tmp_dir=settings.tmp_dir,
            sweep_after=settings.sweep_after_seconds,
            maintenance_interval=settings.maintenance_interval_seconds,
            worker_live_seconds=settings.worker_live_seconds,
            capability_wait_seconds=settings.worker_capability_wait_seconds,
        )

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ready(self) -> None:
        if self._schema_checked:
            return
        if self.auto_upgrade and not self.db.at_head():
            self.db.upgrade()
        self.db.check_schema()
        self._schema_checked = True
        self.sweep_if_due()

    def check(self) -> None:
        """Raise unless the database (at the current schema) and the blob store are reachable."""
        with self.db.transaction() as session:
            session.execute(sa.text("SELECT 1"))
        self.db.check_schema()
        self.storage.ping()

    # -------------------------------------------------------------------------------- leftovers

    def temp_dir(self) -> Path | None:
        """The folder for this registry's temporary work (made on first use)."""
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir

    def sweep(self, older_than: float | None = None, *, storage: bool = True) -> SweepReport:
        """Remove leftovers of interrupted work older than `older_than` seconds (default: the
        registry's threshold): temporary folders, reconstruction cache staging and, with `storage`,
        the blob store's partial files or incomplete multipart uploads."""
        older_than = self.sweep_after if older_than is None else older_than
        report = SweepReport()
        if self.tmp_dir is not None:
            report.extend(sweep_temp(self.tmp_dir, older_than))
        if self.cache is not None:
            report.extend(sweep_cache(self.cache.root, older_than))
        if storage:
            report.extend(self.storage.sweep(older_than))
        if self.tmp_dir is not None and self.tmp_dir.is_dir():
            (self.tmp_dir / SWEPT_MARKER).touch()
        return report

    def sweep_if_due(self) -> SweepReport | None:
        """Sweep local leftovers (not a remote blob store's) unless that was done less than a
        maintenance interval ago: cheap enough for the start of every command."""
        if self.tmp_dir is None:
            return None
        try:
            if time.time() - (self.tmp_dir / SWEPT_MARKER).stat().st_mtime < self.maintenance_interval:
                return None
        except OSError:
            pass  # never swept (or no folder yet)
        return self.sweep(storage=isinstance(self.storage, LocalBlobStorage))

    # ----------------------------------------------------------------------------- inline runs

    def _process(self, version_id: int, reporter: Reporter | None) -> None:
        job = queue.claim_version(
            self.db, version_id, queue.worker_id("inline"), lease_seconds=self.lease_seconds
        )
        self._run(job, reporter)

    def _run(self, job: queue.Job, reporter: Reporter | None) -> None:
        """Run a claimed job's codec here, now (inline runs are not retried)."""
        started = time.perf_counter()
        processing.run_job(
            self.db,
            self.storage,
            job,
            reporter=reporter,
            device=self.device,
            environment=self.environment,
            lease_seconds=self.lease_seconds,
            tmp_dir=self.temp_dir(),
        )
        if self.job_metrics is not None:
            view = self._version_view(job.version_id)
            codec = view.codec or str(view.requested.get("codec"))
            self.job_metrics.observe(codec, view.status, time.perf_counter() - started)

    def _resume(self, version_id: int, reporter: Reporter | None) -> bool:
        """If this registry compresses inline and the version's run was abandoned (its process died
        mid-compression, or before it could start), run it again here and say so. True if it ran."""
        if not self.inline:
            return False
        import_codec_modules(self.codec_modules)
        claimed = queue.claim_orphan(
            self.db, version_id, queue.worker_id("inline"), lease_seconds=self.lease_seconds
        )
        if claimed is None:
            return False
        job, status, reason = claimed
        self.notify(f"{job.ref} was left {status} ({reason}): compressing it again")
        self._run(job, reporter)
        return True

    @retry_read
    def _queued_id(self, ref: str | Ref) -> int | None:
        """The id of the version `ref` names if it is pending or compressing."""
        with self.db.reading() as session:
            version = service.resolve(session, ref)
            return version.id if version.status in QUEUED else None

    # ----------------------------------------------------------------------------------- views

    @retry_read
    def _version_view(self, version_id: int) -> VersionView:
        with self.db.transaction() as session:
            version = VersionRepository(session).get(version_id)
            assert version is not None
            return self._views(session, [(version, service.version_aliases(session, version))])[0]

    def _views(self, session: Session, versions: Sequence[tuple[Version, list[str]]]) -> list[VersionView]:
        """Views of versions with their aliases, and for queued ones what the workers table says."""
        states = workers.queue_states(
            session,
            [version for version, _ in versions],
            live_seconds=self.worker_live_seconds,
            wait_seconds=self.capability_wait_seconds,
        )
        views = []
        for version, aliases in versions:
            state = states.get(version.id, workers.QueueState())
            views.append(VersionView.of(version, aliases, waiting=state.waiting, device=state.device))
        return views
