"""Deleting versions and adapters, and retention.

Deleting is an admin's act. A version an alias points to is kept unless forced, and then the aliases
go with it (each removal recorded in the alias history). Retention keeps an adapter's newest N
versions and deletes older ones, but never one an alias points to, nor one still queued for a codec.

Deleting a row never deletes a blob: it marks the version's blobs released, and garbage collection
(gc.py) removes the blobs that no row references once the grace period has passed since then. A pull
that resolved the version just before it was deleted therefore still finds its artifact.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import alias_audit
from .adapter_repository import AdapterRepository
from .errors import AdapterNotFound, InvalidRequest, VersionAliased
from .lifecycle_schemas import Deleted
from .models import Adapter, Alias, Blob, Version
from .queue_repository import QUEUED
from .refs import AdapterName, Ref
from .repository import db_now
from .service import resolve
from .version_repository import AliasRepository, VersionRepository


def _adapter(session: Session, name: AdapterName) -> Adapter:
    adapter = AdapterRepository(session).get(name)
    if adapter is None:
        raise AdapterNotFound(f"adapter {name} not found")
    # Serializes with pushes and other deletions of this adapter.
    return AdapterRepository(session).lock(adapter)


def release_blobs(session: Session, versions: Sequence[Version]) -> None:
    """Start the grace period of the blobs these versions reference (they are about to go)."""
    digests = {d for v in versions for d in (v.source_digest, v.artifact_digest) if d is not None}
    digests |= {f.sha256 for v in versions for f in v.files}
    if digests:
        session.execute(
            sa.update(Blob)
            .where(Blob.sha256.in_(sorted(digests)))
            .values(released_at=db_now(session))
            .execution_options(synchronize_session=False)
        )


def _drop_versions(session: Session, versions: Sequence[Version]) -> None:
    release_blobs(session, versions)
    session.execute(
        sa.delete(Version)
        .where(Version.id.in_([v.id for v in versions]))
        .execution_options(synchronize_session=False)
    )
    for version in versions:
        session.expunge(version)


def _aliases_on(session: Session, adapter: Adapter, version_ids: set[int]) -> list[Alias]:
    return [a for a in AliasRepository(session).for_adapter(adapter) if a.version_id in version_ids]


def _remove_aliases(session: Session, adapter: Adapter, aliases: Sequence[Alias], actor: str | None) -> None:
    for alias in aliases:
        alias_audit.record(
            session, adapter, alias.name, from_number=alias.version.number, to_number=None, actor=actor
        )
        AliasRepository(session).delete(alias)


def delete_version(session: Session, ref: Ref, *, force: bool = False, actor: str | None = None) -> Deleted:
    """Delete the version `ref` names (a number, alias or digest; a bare name is the adapter, see
    `delete_adapter`). Raises VersionAliased when an alias points to it, unless `force`."""
    if ref.is_latest:
        raise InvalidRequest(f"{ref} names no single version: give ns/name:N, or delete the whole adapter")
    adapter = _adapter(session, ref.adapter)
    version = resolve(session, ref)
    aliases = _aliases_on(session, adapter, {version.id})
    if aliases and not force:
        names = ", ".join(a.name for a in aliases)
        raise VersionAliased(
            f"{version.ref} is what alias {names} points to: move the alias first, or force the deletion "
            "(the alias goes too)"
        )
    deleted = Deleted(adapter=adapter.full_name, versions=[version.number], aliases=[a.name for a in aliases])
    _remove_aliases(session, adapter, aliases, actor)
    _drop_versions(session, [version])
    return deleted


def delete_adapter(session: Session, name: AdapterName, *, force: bool = False) -> Deleted:
    """Delete an adapter with all its versions, aliases, labels and history. Raises VersionAliased
    when it has aliases, unless `force`."""
    adapter = _adapter(session, name)
    aliases = AliasRepository(session).for_adapter(adapter)
    if aliases and not force:
        names = ", ".join(a.name for a in aliases)
        raise VersionAliased(
            f"{adapter.full_name} has aliases ({names}) that serving may depend on: remove them first, "
            "or force the deletion"
        )
    versions = VersionRepository(session).for_adapter(adapter)
    deleted = Deleted(
        adapter=adapter.full_name,
        versions=[v.number for v in versions],
        aliases=[a.name for a in aliases],
        adapter_deleted=True,
    )
    release_blobs(session, versions)
    # The database cascades to versions, aliases, tags, labels and alias history.
    session.execute(
        sa.delete(Adapter).where(Adapter.id == adapter.id).execution_options(synchronize_session=False)
    )
    session.expunge_all()
    return deleted


def retain(
    session: Session, name: AdapterName, keep: int | None = None, *, actor: str | None = None
) -> Deleted:
    """Delete the adapter's versions older than its newest `keep` (default: its retention setting;
    nothing without one), except those an alias points to and those still queued."""
    adapter = _adapter(session, name)
    keep = adapter.keep_versions if keep is None else check_keep(keep)
    deleted = Deleted(adapter=adapter.full_name, keep=keep)
    if keep is None:
        return deleted
    versions = sorted(VersionRepository(session).for_adapter(adapter), key=lambda v: -v.number)
    aliased = {a.version_id for a in AliasRepository(session).for_adapter(adapter)}
    doomed = [v for v in versions[keep:] if v.id not in aliased and v.status not in QUEUED]
    if doomed:
        deleted.versions = sorted(v.number for v in doomed)
        _drop_versions(session, doomed)
    return deleted


def check_keep(keep: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidRequest(f"keep must be a whole number of versions, at least 1 (got {keep!r})")
    return keep


def set_retention(session: Session, name: AdapterName, keep: int | None) -> Adapter:
    """Set (or, with None, clear) how many versions the adapter keeps after each push."""
    adapter = _adapter(session, name)
    adapter.keep_versions = None if keep is None else check_keep(keep)
    session.flush()
    return adapter
