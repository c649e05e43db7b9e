"""The registry as one object: a database and a blob store, with one transaction per operation.

`LocalRegistry` runs the services in-process: embedded (SQLite + a folder, the default) or against
PostgreSQL and S3 directly. Compression runs inline right after a push. Every method returns views
(`schemas`), never ORM objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import service
from .codecs import CodecEnvironment
from .db import Database
from .progress import Reporter
from .refs import AdapterName, Ref
from .schemas import AdapterView, AliasResult, PullResult, PushResult, ShowResult, VersionView
from .settings import Settings
from .storage import BlobStorage, storage_from_url


class LocalRegistry:
    def __init__(
        self,
        database: Database,
        storage: BlobStorage,
        *,
        max_upload_bytes: int | None = None,
        auto_upgrade: bool = False,
        environment: CodecEnvironment | None = None,
    ) -> None:
        self.db = database
        self.storage = storage
        self.environment = environment
        self.max_upload_bytes = max_upload_bytes
        self.auto_upgrade = auto_upgrade
        self._schema_checked = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalRegistry:
        """The registry the settings describe. An embedded (SQLite) registry creates or upgrades its
        schema on first use; a PostgreSQL one must be upgraded explicitly (`adapters db upgrade`)."""
        return cls(
            Database(settings.database_url),
            storage_from_url(settings.storage_url),
            max_upload_bytes=settings.max_upload_bytes,
            auto_upgrade=settings.embedded,
            environment=CodecEnvironment.from_settings(settings),
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

    def _version_view(self, version_id: int) -> VersionView:
        with self.db.transaction() as session:
            version = service.VersionRepository(session).get(version_id)
            assert version is not None
            return VersionView.of(version, service.version_aliases(session, version))

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
        codec: str = "raw",
        params: dict[str, Any] | None = None,
        on_gate_fail: service.GateFallback = "raw",
        created_by: str | None = None,
        process: bool = True,
        reporter: Reporter | None = None,
    ) -> PushResult:
        """Push a PEFT directory; with `process` (the default) compress it right away."""
        request = service.PushRequest(
            path=Path(path),
            name=name if isinstance(name, AdapterName) else AdapterName.parse(name),
            task=task,
            base_model=base_model,
            description=description,
            tags=tuple(tags),
            aliases=tuple(aliases),
            codec=codec,
            params=dict(params or {}),
            on_gate_fail=on_gate_fail,
            created_by=created_by,
        )
        self._ready()
        pushed = service.push(
            self.db, self.storage, request, max_bytes=self.max_upload_bytes, reporter=reporter
        )
        if pushed.created and process:
            service.process_version(
                self.db, self.storage, pushed.version_id, reporter=reporter, environment=self.environment
            )
        return PushResult(created=pushed.created, version=self._version_view(pushed.version_id))

    def process(self, ref: str | Ref, *, reporter: Reporter | None = None) -> VersionView:
        """Run the codec of a pending version (pushed with `process=False`)."""
        self._ready()
        with self.db.transaction() as session:
            version_id = service.resolve(session, ref).id
        service.process_version(
            self.db, self.storage, version_id, reporter=reporter, environment=self.environment
        )
        return self._version_view(version_id)

    def set_alias(self, target: str | Ref, alias: str, *, by: str | None = None) -> AliasResult:
        self._ready()
        with self.db.transaction() as session:
            version, previous = service.set_alias(session, target, alias, by=by)
            return AliasResult(
                adapter=version.adapter.full_name, alias=alias, version=version.number, previous=previous
            )

    def remove_alias(self, name: str | AdapterName, alias: str) -> AliasResult:
        self._ready()
        with self.db.transaction() as session:
            previous = service.remove_alias(session, name, alias)
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
        self._ready()
        version_id, files = service.pull(
            self.db, self.storage, ref, Path(out_dir), force=force, reporter=reporter
        )
        return PullResult(version=self._version_view(version_id), path=str(out_dir), files=files)

    def resolve(self, ref: str | Ref) -> VersionView:
        self._ready()
        with self.db.transaction() as session:
            version = service.resolve(session, ref)
            return VersionView.of(version, service.version_aliases(session, version))

    def list(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
    ) -> list[AdapterView]:
        self._ready()
        with self.db.transaction() as session:
            found = service.search(session, namespace=namespace, task=task, base_model=base_model, tag=tag)
            return [
                AdapterView.of(adapter, versions=count, latest=latest, aliases=aliases)
                for adapter, count, latest, aliases in found
            ]

    def show(self, ref: str | Ref) -> ShowResult:
        """An adapter, the version `ref` names (for a bare name: the latest, if any) and all versions."""
        self._ready()
        ref = service.as_ref(ref)
        with self.db.transaction() as session:
            adapter = service.get_adapter(session, ref.adapter)
            _, count, latest, aliases = service.summarize(session, [adapter])[0]
            all_versions = service.VersionRepository(session).for_adapter(adapter)
            by_version: dict[int, list[str]] = {}
            for alias, number in aliases.items():
                by_version.setdefault(number, []).append(alias)
            # A bare name with no ready version still shows the adapter and its versions.
            version = None if ref.is_latest and latest is None else service.resolve(session, ref)
            return ShowResult(
                adapter=AdapterView.of(adapter, versions=count, latest=latest, aliases=aliases),
                version=VersionView.of(version, by_version.get(version.number, [])) if version else None,
                versions=[VersionView.of(v, by_version.get(v.number, [])) for v in all_versions],
            )
