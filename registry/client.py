"""The registry as one object: a database and a blob store, with one transaction per operation.

`LocalRegistry` runs the services in-process: embedded (SQLite + a folder, the default) or against
PostgreSQL and S3 directly. With inline compression (embedded, or ADAPTERS_COMPRESSION=inline) the
codec runs right after a push; otherwise the version waits, pending, for a worker. `RemoteRegistry`
(remote.py) offers the same methods over the HTTP API. Every method returns views (`schemas`), never
ORM objects.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import jobs, queue, service, tokens, workers
from .cache import CachedAdapter, ReconstructionCache
from .codecs import CodecEnvironment
from .db import Database
from .engines import CompatFilter
from .errors import DatabaseUnavailable, VersionNotReady, WaitTimeout
from .folder_files import StoredFile
from .lifecycle_client import LifecycleMethods
from .metrics import JobMetrics
from .models import Version
from .progress import Reporter
from .recompress_client import RecompressMethods
from .refs import AdapterName, Ref
from .repository import QUEUED
from .schemas import (
    AdapterView,
    AliasResult,
    PullResult,
    PushResult,
    ShowResult,
    TokenCreated,
    TokenView,
    VersionView,
    WorkerView,
    adapter_view,
)
from .settings import Settings
from .storage import BlobStorage, LocalBlobStorage, storage_from_url
from .sweep import SweepReport, sweep_cache, sweep_temp
from .webhook_client import WebhookMethods

SETTLED = ("ready", "rejected", "failed")
SWEPT_MARKER = ".swept"  # in the temporary folder: when leftovers were last swept
log = logging.getLogger("adapters.registry")
R = TypeVar("R", bound=Callable[..., Any])


def retry_read(method: R) -> R:
    """Run an idempotent read once more when the database dropped its connection. The pool replaces
    dead connections as it meets them, so the second try gets a fresh one (after a restart, or
    `pg_terminate_backend`); if the database is down, it fails the same way a moment later."""

    @functools.wraps(method)
    def read(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except DatabaseUnavailable as exc:
            log.info("retrying a read on a fresh connection: %s", exc)
            return method(*args, **kwargs)

    return read  # type: ignore[return-value]


class Registry(Protocol):
    """What the CLI needs from a registry, local or remote."""

    def push(
        self,
        path: str | Path,
        name: str | AdapterName,
        *,
        task: str | None = None,
        base_model: str | None = None,
        description: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        aliases: tuple[str, ...] | list[str] = (),
        codec: str | None = None,
        params: dict[str, Any] | None = None,
        on_gate_fail: service.GateFallback = "raw",
        created_by: str | None = None,
        reporter: Reporter | None = None,
    ) -> PushResult: ...

    def wait(
        self,
        ref: str | Ref,
        *,
        timeout: float | None = None,
        on_change: Callable[[VersionView], None] | None = None,
    ) -> VersionView: ...

    def pull(
        self, ref: str | Ref, out_dir: str | Path, *, force: bool = False, reporter: Reporter | None = None
    ) -> PullResult: ...

    def resolve(self, ref: str | Ref) -> VersionView: ...

    def list(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        compat: CompatFilter | None = None,
    ) -> list[AdapterView]: ...

    def show(self, ref: str | Ref) -> ShowResult: ...

    def adapter(self, name: str | AdapterName) -> AdapterView: ...

    def set_alias(self, target: str | Ref, alias: str, *, by: str | None = None) -> AliasResult: ...

    def remove_alias(self, name: str | AdapterName, alias: str) -> AliasResult: ...

    def yank(self, ref: str | Ref, reason: str | None = None) -> VersionView: ...

    def unyank(self, ref: str | Ref) -> VersionView: ...

    def create_token(
        self,
        name: str,
        scope: str,
        *,
        namespace: str | None = None,
        expires_at: dt.datetime | None = None,
        by: str | None = None,
    ) -> TokenCreated: ...

    def list_tokens(self, *, include_revoked: bool = False) -> list[TokenView]: ...

    def revoke_token(self, token_id: str) -> TokenView: ...

    def workers(self) -> list[WorkerView]: ...

    def list_jobs(self, *, queue: str | None = None, status: str | None = None) -> list[jobs.JobView]: ...

    def retry_job(self, job_id: int) -> jobs.JobView: ...

    def cancel_job(self, job_id: int) -> jobs.JobView: ...

    def close(self) -> None: ...


def poll_until_settled(
    get: Callable[[], VersionView],
    *,
    timeout: float | None,
    on_change: Callable[[VersionView], None] | None,
    interval: tuple[float, float] = (0.1, 2.0),
) -> VersionView:
    """Call `get` until the version is ready, rejected or failed, backing off from interval[0] to
    interval[1] seconds; `on_change` sees each new (status, attempts)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wait, seen = interval[0], None
    while True:
        view = get()
        if (view.status, view.attempts) != seen:
            seen = (view.status, view.attempts)
            if on_change is not None:
                on_change(view)
        if view.status in SETTLED:
            return view
        if deadline is not None and time.monotonic() + wait > deadline:
            raise WaitTimeout(f"{view.ref} is still {view.status} after {timeout:g} s")
        time.sleep(wait)
        wait = min(wait * 1.5, interval[1])


def import_codec_modules(modules: list[str]) -> None:
    """Import modules that register extra codecs (ADAPTERS_EXTRA_CODECS)."""
    for module in modules:
        importlib.import_module(module)


class LocalRegistry(LifecycleMethods, WebhookMethods, RecompressMethods):
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
        default_codec: str = service.DEFAULT_CODEC,
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

    # ------------------------------------------------------------------------ abandoned compressions

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
    def _version_view(self, version_id: int) -> VersionView:
        with self.db.transaction() as session:
            version = service.VersionRepository(session).get(version_id)
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

    # ------------------------------------------------------------------------------------- writes

    def push(
        self,
        path: str | Path,
        name: str | AdapterName,
        *,
        task: str | None = None,
        base_model: str | None = None,
        description: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        aliases: tuple[str, ...] | list[str] = (),
        codec: str | None = None,
        params: dict[str, Any] | None = None,
        on_gate_fail: service.GateFallback = "raw",
        created_by: str | None = None,
        process: bool | None = None,
        reporter: Reporter | None = None,
        label: str | None = None,
        labels: dict[str, str] | None = None,
        base_model_revision: str | None = None,
    ) -> PushResult:
        """Push a PEFT directory stored with `codec` (default: the registry's, nola unless configured
        otherwise); with `process` (default: the registry's inline setting) compress it right away,
        else leave it pending for a worker."""
        request = service.PushRequest(
            path=Path(path),
            name=name if isinstance(name, AdapterName) else AdapterName.parse(name),
            task=task,
            base_model=base_model,
            description=description,
            tags=tuple(tags),
            aliases=tuple(aliases),
            codec=codec or self.default_codec,
            params=dict(params or {}),
            on_gate_fail=on_gate_fail,
            created_by=created_by,
            label=label,
            labels=dict(labels or {}),
            base_model_revision=base_model_revision,
        )
        self._ready()
        import_codec_modules(self.codec_modules)
        compress = self.inline if process is None else process
        pushed = service.push(
            self.db,
            self.storage,
            request,
            max_bytes=self.max_upload_bytes,
            reporter=reporter,
            tmp_dir=self.temp_dir(),
            # Left for workers: its job is deferred with the version (the queue is PostgreSQL's).
            enqueue=jobs.defer_in if not compress and self.db.dialect == "postgresql" else None,
        )
        if pushed.created:
            self._retain_after_push(request.name)
        resumed = False
        if pushed.created and compress:
            self._process(pushed.version_id, reporter)
        elif compress:  # content it holds: finish it if its first run was abandoned
            resumed = self._resume(pushed.version_id, reporter)
        return PushResult(
            created=pushed.created, resumed=resumed, version=self._version_view(pushed.version_id)
        )

    def _process(self, version_id: int, reporter: Reporter | None) -> None:
        job = queue.claim_version(
            self.db, version_id, queue.worker_id("inline"), lease_seconds=self.lease_seconds
        )
        self._run(job, reporter)

    def _run(self, job: queue.Job, reporter: Reporter | None) -> None:
        """Run a claimed job's codec here, now (inline runs are not retried)."""
        started = time.perf_counter()
        service.run_job(
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

    def process(self, ref: str | Ref, *, reporter: Reporter | None = None) -> VersionView:
        """Run the codec of a pending version (pushed with `process=False`)."""
        self._ready()
        import_codec_modules(self.codec_modules)
        with self.db.transaction() as session:
            version_id = service.resolve(session, ref).id
        self._process(version_id, reporter)
        return self._version_view(version_id)

    def wait(
        self,
        ref: str | Ref,
        *,
        timeout: float | None = None,
        on_change: Callable[[VersionView], None] | None = None,
    ) -> VersionView:
        """Poll until the version `ref` names is ready, rejected or failed (a worker settles it, or
        this process when it compresses inline and the version's run was abandoned)."""

        def get() -> VersionView:
            view = self.resolve(ref)
            if view.status in QUEUED and self.inline:
                version_id = self._queued_id(ref)
                if version_id is not None and self._resume(version_id, None):
                    view = self.resolve(ref)
            return view

        return poll_until_settled(get, timeout=timeout, on_change=on_change)

    @retry_read
    def _queued_id(self, ref: str | Ref) -> int | None:
        """The id of the version `ref` names if it is pending or compressing."""
        with self.db.reading() as session:
            version = service.resolve(session, ref)
            return version.id if version.status in QUEUED else None

    def set_alias(
        self, target: str | Ref, alias: str, *, by: str | None = None, admin: bool = True
    ) -> AliasResult:
        self._ready()
        with self.db.transaction() as session:
            version, previous = service.set_alias(session, target, alias, by=by, admin=admin)
            return AliasResult(
                adapter=version.adapter.full_name, alias=alias, version=version.number, previous=previous
            )

    def remove_alias(
        self, name: str | AdapterName, alias: str, *, by: str | None = None, admin: bool = True
    ) -> AliasResult:
        self._ready()
        with self.db.transaction() as session:
            previous = service.remove_alias(session, name, alias, by=by or self.principal.name, admin=admin)
            return AliasResult(adapter=str(name), alias=alias, version=None, previous=previous)

    def yank(self, ref: str | Ref, reason: str | None = None) -> VersionView:
        self._ready()
        with self.db.transaction() as session:
            version = service.yank(session, ref, reason)
            return VersionView.of(version, service.version_aliases(session, version))

    def unyank(self, ref: str | Ref) -> VersionView:
        self._ready()
        with self.db.transaction() as session:
            version = service.unyank(session, ref)
            return VersionView.of(version, service.version_aliases(session, version))

    # -------------------------------------------------------------------------------------- reads

    def pull(
        self, ref: str | Ref, out_dir: str | Path, *, force: bool = False, reporter: Reporter | None = None
    ) -> PullResult:
        """Write the PEFT files of the version `ref` names into `out_dir` (see service.pull). A version
        whose compression was abandoned is compressed first, here, when this registry compresses inline."""
        self._ready()

        def pull() -> tuple[int, list[str]]:
            return service.pull(
                self.db,
                self.storage,
                ref,
                Path(out_dir),
                force=force,
                reporter=reporter,
                cache=self.cache,
                tmp_dir=self.temp_dir(),
                sweep_after=self.sweep_after,
            )

        try:
            version_id, files = pull()
        except VersionNotReady:
            queued = self._queued_id(ref) if self.inline else None
            if queued is None or not self._resume(queued, reporter):
                raise
            version_id, files = pull()
        return PullResult(version=self._version_view(version_id), path=str(out_dir), files=files)

    @retry_read
    def resolve(self, ref: str | Ref) -> VersionView:
        self._ready()
        with self.db.reading() as session:
            version = service.resolve(session, ref)
            return self._views(session, [(version, service.version_aliases(session, version))])[0]

    @retry_read
    def list(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        after: str | AdapterName | None = None,
        limit: int | None = None,
        compat: CompatFilter | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[AdapterView]:
        """Adapters matching every filter, in name order; with `limit`, one page (names after `after`).
        `compat` filters on the compatibility facts of each adapter's latest version, `labels` keeps
        adapters with a version that carries all of them."""
        self._ready()
        if isinstance(after, str):
            after = AdapterName.parse(after)
        with self.db.reading() as session:
            found = service.search(
                session,
                namespace=namespace,
                task=task,
                base_model=base_model,
                tag=tag,
                after=after,
                limit=limit,
                compat=compat,
                labels=labels,
            )
            return [adapter_view(summary) for summary in found]

    @retry_read
    def adapter(self, name: str | AdapterName) -> AdapterView:
        self._ready()
        with self.db.reading() as session:
            return adapter_view(service.describe(session, name))

    @retry_read
    def versions(
        self, name: str | AdapterName, *, after: int | None = None, limit: int | None = None
    ) -> list[VersionView]:
        """An adapter's versions by number; with `limit`, one page (numbers after `after`)."""
        self._ready()
        with self.db.reading() as session:
            return self._views(session, service.list_versions(session, name, after=after, limit=limit))

    def open_files(self, ref: str | Ref) -> tuple[VersionView, CachedAdapter]:
        """A ready version and its files, open: the reconstructed PEFT files (served from the cache when
        there) and the others it stores. Close the files when done."""
        version = self._ready_version(ref)
        assert version.artifact_digest is not None and version.artifact_size is not None
        files = service.materialize(
            self.storage,
            (version.artifact_digest, version.artifact_size),
            label=version.ref,
            cache=self.cache,
        )
        for record in version.files:  # README, tokenizer, ...: straight from the blob store
            files.files[record["name"]] = StoredFile(self.storage, record)  # type: ignore[assignment]
        return version, files

    def artifact(self, ref: str | Ref) -> tuple[VersionView, Iterator[bytes]]:
        """A ready version and its stored artifact's bytes, verified as they stream."""
        version = self._ready_version(ref)
        assert version.artifact_digest is not None
        return version, self.storage.iter_chunks(version.artifact_digest)

    def ready_version(self, ref: str | Ref) -> VersionView:
        """The ready version `ref` names, without its aliases (what a download's headers need)."""
        return self._ready_version(ref)

    @retry_read
    def _ready_version(self, ref: str | Ref) -> VersionView:
        """The version behind a download: a plain read, without its aliases (downloads need none)."""
        self._ready()
        with self.db.reading() as session:
            return VersionView.of(service.require_ready(service.resolve(session, ref)))

    def check(self) -> None:
        """Raise unless the database (at the current schema) and the blob store are reachable."""
        with self.db.transaction() as session:
            session.execute(sa.text("SELECT 1"))
        self.db.check_schema()
        self.storage.ping()

    def show(self, ref: str | Ref) -> ShowResult:
        """An adapter, the version `ref` names (for a bare name: the latest, if any) and all versions.
        Where this registry compresses inline, versions whose compression was abandoned are
        compressed first."""
        self._ready()
        ref = service.as_ref(ref)
        shown, queued = self._show(ref)
        resumed = [version_id for version_id in queued if self._resume(version_id, None)]
        return self._show(ref)[0] if resumed else shown

    @retry_read
    def _show(self, ref: Ref) -> tuple[ShowResult, list[int]]:
        """What `show` shows, and the ids of the versions that are pending or compressing."""
        with self.db.transaction() as session:
            adapter = service.get_adapter(session, ref.adapter)
            _, count, latest, aliases = service.summarize(session, [adapter])[0]
            all_versions = service.VersionRepository(session).for_adapter(adapter)
            by_version: dict[int, list[str]] = {}
            for alias, number in aliases.items():
                by_version.setdefault(number, []).append(alias)
            # A bare name with no ready version still shows the adapter and its versions.
            version = None if ref.is_latest and latest is None else service.resolve(session, ref)
            views = self._views(session, [(v, by_version.get(v.number, [])) for v in all_versions])
            shown = ShowResult(
                adapter=AdapterView.of(adapter, versions=count, latest=latest, aliases=aliases),
                version=next(view for view in views if view.number == version.number) if version else None,
                versions=views,
            )
            queued = [v.id for v in all_versions if v.status in QUEUED] if self.inline else []
            return shown, queued

    def workers(self) -> list[WorkerView]:
        """The live compression workers, oldest first, with their devices and base models."""
        self._ready()
        with self.db.reading() as session:
            return workers.live_workers(session, live_seconds=self.worker_live_seconds)

    # --------------------------------------------------------------------------------- jobs (admin)

    def _jobs_admin(self, principal: tokens.Principal | None) -> tokens.Principal:
        self._ready()
        jobs.require_queue(self.db)
        who = principal or self.principal
        who.require("admin")  # across namespaces: a namespace admin does not see the queue
        return who

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        principal: tokens.Principal | None = None,
    ) -> list[jobs.JobView]:
        """The newest queue jobs first (PostgreSQL; admin)."""
        self._jobs_admin(principal)
        with self.db.reading() as session:
            return jobs.list_jobs(session, queue=queue, status=status, limit=limit)

    def retry_job(self, job_id: int, *, principal: tokens.Principal | None = None) -> jobs.JobView:
        """Run a failed or cancelled compression job again, its version pending again (admin)."""
        self._jobs_admin(principal)
        with self.db.transaction() as session:
            return jobs.retry(session, job_id)

    def cancel_job(self, job_id: int, *, principal: tokens.Principal | None = None) -> jobs.JobView:
        """Cancel a waiting compression job; its version fails with the reason (admin)."""
        who = self._jobs_admin(principal)
        with self.db.transaction() as session:
            return jobs.cancel(session, job_id, by=who.name)

    # ------------------------------------------------------------------------------------- tokens

    def create_token(
        self,
        name: str,
        scope: str,
        *,
        namespace: str | None = None,
        expires_at: dt.datetime | None = None,
        by: str | None = None,
        principal: tokens.Principal | None = None,
    ) -> TokenCreated:
        """Make a token as `principal` (default: this registry's local user, an admin)."""
        self._ready()
        principal = principal or (tokens.Principal.local(by) if by else self.principal)
        with self.db.transaction() as session:
            token, secret = tokens.create_token(
                session, name=name, scope=scope, namespace=namespace, expires_at=expires_at, by=principal
            )
            return TokenCreated(token=TokenView.of(token), secret=secret)

    @retry_read
    def list_tokens(
        self, *, include_revoked: bool = False, principal: tokens.Principal | None = None
    ) -> list[TokenView]:
        self._ready()
        with self.db.transaction() as session:
            found = tokens.list_tokens(
                session, by=principal or self.principal, include_revoked=include_revoked
            )
            return [TokenView.of(t) for t in found]

    def revoke_token(self, token_id: str, *, principal: tokens.Principal | None = None) -> TokenView:
        self._ready()
        with self.db.transaction() as session:
            return TokenView.of(tokens.revoke_token(session, token_id, by=principal or self.principal))

    @retry_read
    def authenticate(self, secret: str) -> tokens.Principal:
        """The principal a bearer token stands for (raises InvalidToken)."""
        self._ready()
        with self.db.reading() as session:
            return tokens.authenticate(session, secret)
