"""The lifecycle and lineage operations of `LocalRegistry`: delete, retain, collect garbage, alias
history and protection, labels. A mixin, like the write, read and admin ones (client.py); the methods
use the registry's database (`db`), blob store (`storage`) and schema check (`_ready`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import alias_audit, gc, labels, lifecycle, service
from .adapter_repository import AdapterRepository
from .errors import AliasProtected
from .lifecycle_schemas import AliasEventView, AliasHistory, AliasProtection, Deleted, LabelsView
from .refs import AdapterName, Ref
from .version_repository import AliasRepository

if TYPE_CHECKING:
    from .db import Database
    from .storage import BlobStorage
    from .tokens import Principal


def _name(name: str | AdapterName) -> AdapterName:
    return name if isinstance(name, AdapterName) else AdapterName.parse(name)


class LifecycleMethods:
    db: Database
    storage: BlobStorage
    principal: Principal

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    def delete(self, ref: str | Ref, *, force: bool = False, actor: str | None = None) -> Deleted:
        """Delete the version `ref` names, or with a bare `ns/name` the whole adapter. What an alias
        points to is refused (VersionAliased) unless `force`. Blobs stay until garbage collection."""
        self._ready()
        ref = service.as_ref(ref)
        with self.db.transaction() as session:
            if ref.is_latest:
                return lifecycle.delete_adapter(session, ref.adapter, force=force)
            return lifecycle.delete_version(session, ref, force=force, actor=actor or self.principal.name)

    def retain(self, name: str | AdapterName, keep: int | None = None, *, save: bool = False) -> Deleted:
        """Delete versions older than the newest `keep` (default: the adapter's setting), never an
        aliased or queued one; with `save`, also make `keep` the adapter's setting, applied after
        each push."""
        self._ready()
        with self.db.transaction() as session:
            if save:
                lifecycle.set_retention(session, _name(name), keep)
            return lifecycle.retain(session, _name(name), keep)

    def clear_retention(self, name: str | AdapterName) -> Deleted:
        """Stop deleting old versions of the adapter after pushes."""
        self._ready()
        with self.db.transaction() as session:
            adapter = lifecycle.set_retention(session, _name(name), None)
            return Deleted(adapter=adapter.full_name)

    def _retain_after_push(self, name: AdapterName) -> None:
        with self.db.transaction() as session:
            lifecycle.retain(session, name)

    def collect_garbage(
        self, *, grace_seconds: float = gc.DEFAULT_GRACE_SECONDS, dry_run: bool = False
    ) -> gc.GcReport:
        self._ready()
        return gc.collect_garbage(self.db, self.storage, grace_seconds=grace_seconds, dry_run=dry_run)

    def alias_history(self, name: str | AdapterName, alias: str | None = None) -> AliasHistory:
        self._ready()
        with self.db.reading() as session:
            adapter = service.get_adapter(session, name)
            events = alias_audit.history(session, adapter, alias)
            return AliasHistory(events=[AliasEventView.of(adapter.full_name, e) for e in events])

    def protect_alias(self, name: str | AdapterName, alias: str, protected: bool = True) -> AliasProtection:
        """Protect an alias (only admins move or remove it) or lift that; an admin's act."""
        self._ready()
        with self.db.transaction() as session:
            adapter = service.get_adapter(session, name)
            return AliasProtection.of(alias_audit.set_protected(session, adapter, alias, protected))

    def check_push_aliases(self, name: AdapterName, aliases: Sequence[str], *, admin: bool) -> None:
        """Refuse a push that would move a protected alias for someone who is not an admin."""
        if admin or not aliases:
            return
        self._ready()
        with self.db.reading() as session:
            adapter = AdapterRepository(session).get(name)
            if adapter is None:
                return
            for alias in aliases:
                found = AliasRepository(session).get(adapter, alias)
                if found is not None and found.protected:
                    raise AliasProtected(
                        f"alias {alias!r} of {adapter.full_name} is protected: only an admin may move it"
                    )

    def label(
        self, ref: str | Ref, set_: Mapping[str, str] | None = None, remove: Sequence[str] = ()
    ) -> LabelsView:
        """Set and remove labels on the version `ref` names; returns its labels after."""
        self._ready()
        with self.db.transaction() as session:
            version = service.resolve(session, ref)
            return LabelsView(
                ref=version.ref, labels=labels.update(session, version, dict(set_ or {}), remove)
            )
