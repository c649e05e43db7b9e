"""The write operations of `LocalRegistry` (a mixin): push, process, wait for a version to settle,
aliases, yank. The methods use the registry's database (`db`), blob store (`storage`), settings and
the helpers client.py defines (`_ready`, `_process`, `_resume`, `_version_view`, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import jobs, push, service
from .client_protocol import poll_until_settled
from .codecs import import_codec_modules
from .progress import Reporter
from .queue_repository import QUEUED
from .refs import AdapterName, Ref
from .schemas import AliasResult, PushResult, VersionView

if TYPE_CHECKING:
    from .db import Database
    from .storage import BlobStorage
    from .tokens import Principal


class WriteMethods:
    db: Database
    storage: BlobStorage
    principal: Principal
    default_codec: str
    max_upload_bytes: int | None
    inline: bool
    codec_modules: list[str]

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    if TYPE_CHECKING:  # LocalRegistry's and the other mixins'

        def temp_dir(self) -> Path | None: ...
        def _process(self, version_id: int, reporter: Reporter | None) -> None: ...
        def _resume(self, version_id: int, reporter: Reporter | None) -> bool: ...
        def _version_view(self, version_id: int) -> VersionView: ...
        def _queued_id(self, ref: str | Ref) -> int | None: ...
        def _retain_after_push(self, name: AdapterName) -> None: ...
        def resolve(self, ref: str | Ref) -> VersionView: ...

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
        on_gate_fail: push.GateFallback = "raw",
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
        request = push.PushRequest(
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
        pushed = push.push(
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
