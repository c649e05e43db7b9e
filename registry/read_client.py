"""The read operations of `LocalRegistry` (a mixin): pull, resolve, list, show, and the open files
and artifact bytes the API serves for downloads. The methods use the registry's database (`db`), blob
store (`storage`), reconstruction cache and the helpers client.py defines (`_ready`, `_views`,
`_resume`, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import pull, service
from .cache import CachedAdapter, ReconstructionCache
from .db import retry_read
from .engines import CompatFilter
from .errors import VersionNotReady
from .folder_files import StoredFile
from .progress import Reporter
from .queue_repository import QUEUED
from .refs import AdapterName, Ref
from .schemas import AdapterView, PullResult, ShowResult, VersionView, adapter_view
from .version_repository import VersionRepository

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm import Session

    from .db import Database
    from .models import Version
    from .storage import BlobStorage


class ReadMethods:
    db: Database
    storage: BlobStorage
    cache: ReconstructionCache | None
    inline: bool
    sweep_after: float

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    if TYPE_CHECKING:  # LocalRegistry's

        def temp_dir(self) -> Path | None: ...
        def _resume(self, version_id: int, reporter: Reporter | None) -> bool: ...
        def _version_view(self, version_id: int) -> VersionView: ...
        def _queued_id(self, ref: str | Ref) -> int | None: ...
        def _views(
            self, session: Session, versions: Sequence[tuple[Version, list[str]]]
        ) -> list[VersionView]: ...

    def pull(
        self, ref: str | Ref, out_dir: str | Path, *, force: bool = False, reporter: Reporter | None = None
    ) -> PullResult:
        """Write the PEFT files of the version `ref` names into `out_dir` (see pull.pull). A version
        whose compression was abandoned is compressed first, here, when this registry compresses inline."""
        self._ready()

        def pull_once() -> tuple[int, list[str]]:
            return pull.pull(
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
            version_id, files = pull_once()
        except VersionNotReady:
            queued = self._queued_id(ref) if self.inline else None
            if queued is None or not self._resume(queued, reporter):
                raise
            version_id, files = pull_once()
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
        files = pull.materialize(
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
            all_versions = VersionRepository(session).for_adapter(adapter)
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
