"""The registry's single-transaction operations: resolve refs, list and describe adapters, aliases,
yank. Each takes the caller's `Session` and never commits.

The operations that move blobs run their own short transactions around the storage work and live
beside this module: push.py (validate and store a new version), processing.py (run its codec and
record the outcome), pull.py (reconstruct a version's files). They use what is here to resolve refs
and point aliases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from . import alias_audit, events, limits
from .adapter_repository import AdapterRepository
from .db import utcnow
from .engines import CompatFilter
from .errors import AdapterNotFound, AliasNotFound, VersionNotFound, VersionNotReady
from .models import Adapter, Alias, Version, VersionStatus
from .refs import AdapterName, Ref, check_alias
from .version_repository import AliasRepository, VersionRepository


def as_ref(ref: str | Ref) -> Ref:
    return ref if isinstance(ref, Ref) else Ref.parse(ref)


# ---------------------------------------------------------------------------------- resolve and read


def get_adapter(session: Session, name: AdapterName | str) -> Adapter:
    name = name if isinstance(name, AdapterName) else AdapterName.parse(name)
    adapter = AdapterRepository(session).get(name)
    if adapter is None:
        raise AdapterNotFound(f"adapter {name} not found")
    return adapter


def resolve(session: Session, ref: str | Ref) -> Version:
    """The version a ref names. Bare names skip yanked versions; explicit refs do not."""
    ref = as_ref(ref)
    adapter = get_adapter(session, ref.adapter)
    versions = VersionRepository(session)
    if ref.number is not None:
        version = versions.by_number(adapter, ref.number)
        if version is None:
            highest = f" (the highest is {adapter.last_version})" if adapter.last_version else ""
            raise VersionNotFound(f"{adapter.full_name} has no version {ref.number}{highest}")
        return version
    if ref.alias is not None:
        alias = AliasRepository(session).get(adapter, ref.alias)
        if alias is None:
            known = ", ".join(a.name for a in AliasRepository(session).for_adapter(adapter)) or "none"
            raise AliasNotFound(f"{adapter.full_name} has no alias {ref.alias!r} (aliases: {known})")
        return alias.version
    if ref.digest is not None:
        version = versions.by_digest(adapter, ref.digest)
        if version is None:
            raise VersionNotFound(f"{adapter.full_name} has no version with sha256:{ref.digest}")
        return version
    version = versions.latest_ready(adapter)
    if version is None:
        raise VersionNotFound(f"{adapter.full_name} has no ready version that is not yanked")
    return version


def require_ready(version: Version) -> Version:
    if version.status != VersionStatus.READY.value:
        reason = f": {version.error}" if version.error else ""
        raise VersionNotReady(f"{version.ref} is {version.status}{reason}")
    return version


def version_aliases(session: Session, version: Version) -> list[str]:
    return [
        a.name for a in AliasRepository(session).for_adapter(version.adapter) if a.version_id == version.id
    ]


def summarize(
    session: Session, adapters: Sequence[Adapter]
) -> list[tuple[Adapter, int, int | None, dict[str, int]]]:
    """Each adapter with its number of versions, its latest version number and its aliases."""
    ids = [a.id for a in adapters]
    summary = VersionRepository(session).summary(ids)
    aliases = AliasRepository(session).by_adapter_ids(ids)
    return [(a, *summary.get(a.id, (0, None)), aliases.get(a.id, {})) for a in adapters]


def search(
    session: Session,
    *,
    namespace: str | None = None,
    task: str | None = None,
    base_model: str | None = None,
    tag: str | None = None,
    after: AdapterName | None = None,
    limit: int | None = None,
    compat: CompatFilter | None = None,
    labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Adapters matching every given filter, in name order (the first `limit` after `after`), as
    listing rows with their latest version, tags and aliases (see `AdapterRepository.summaries`).
    `compat` filters on the facts of each adapter's latest version."""
    if base_model is not None and limits.base_model_problem(base_model) is not None:
        return []  # no adapter can have it (and PostgreSQL cannot even compare a string with NUL)
    return AdapterRepository(session).summaries(
        namespace=namespace,
        task=task,
        base_model=base_model,
        tag=tag,
        after=after,
        limit=limit,
        compat=compat,
        labels=labels,
    )


def describe(session: Session, name: AdapterName | str) -> dict[str, Any]:
    """One adapter as a listing row; raises AdapterNotFound."""
    name = name if isinstance(name, AdapterName) else AdapterName.parse(name)
    found = AdapterRepository(session).summaries(name=name)
    if not found:
        raise AdapterNotFound(f"adapter {name} not found")
    return found[0]


def list_versions(
    session: Session, name: AdapterName | str, *, after: int | None = None, limit: int | None = None
) -> list[tuple[Version, list[str]]]:
    """An adapter's versions by number (the first `limit` after `after`), each with its aliases."""
    adapter = get_adapter(session, name)
    by_version: dict[int, list[str]] = {}
    for alias in AliasRepository(session).for_adapter(adapter):
        by_version.setdefault(alias.version_id, []).append(alias.name)
    versions = VersionRepository(session).for_adapter(adapter, after=after, limit=limit)
    return [(v, by_version.get(v.id, [])) for v in versions]


# --------------------------------------------------------------------------------------- aliases


def point_alias(
    session: Session, version: Version, alias: str, *, by: str | None, admin: bool = True
) -> tuple[Alias, int | None]:
    """Point `alias` at `version` (ready, not yanked; a protected alias moves only for an `admin`)
    and record the move; returns the alias and the number of the version it pointed to before."""
    check_alias(alias)
    if version.status != VersionStatus.READY.value:
        reason = f" ({version.error})" if version.error else ""
        raise VersionNotReady(
            f"cannot point alias {alias!r} at {version.ref}: it is {version.status}{reason}"
        )
    if version.yanked:
        raise VersionNotReady(f"cannot point alias {alias!r} at {version.ref}: it is yanked")
    aliases = AliasRepository(session)
    previous = aliases.get(version.adapter, alias)
    alias_audit.check_may_change(previous, admin=admin)
    previous_number = previous.version.number if previous is not None else None
    alias_audit.record(
        session, version.adapter, alias, from_number=previous_number, to_number=version.number, actor=by
    )
    return aliases.set(version.adapter, alias, version, by=by), previous_number


def set_alias(
    session: Session, target: str | Ref, alias: str, *, by: str | None = None, admin: bool = True
) -> tuple[Version, int | None]:
    """Create or move `alias` to the version `target` names (which must be ready and not yanked).
    A protected alias moves only for an `admin`."""
    check_alias(alias)
    version = resolve(session, target)
    _, previous = point_alias(session, version, alias, by=by, admin=admin)
    return version, previous


def remove_alias(
    session: Session, name: AdapterName | str, alias: str, *, by: str | None = None, admin: bool = True
) -> int:
    """Delete an alias (a protected one only for an `admin`); returns the number of the version it
    pointed to."""
    check_alias(alias)
    adapter = get_adapter(session, name)
    aliases = AliasRepository(session)
    found = aliases.get(adapter, alias)
    if found is None:
        raise AliasNotFound(f"{adapter.full_name} has no alias {alias!r}")
    alias_audit.check_may_change(found, admin=admin)
    number = found.version.number
    alias_audit.record(session, adapter, alias, from_number=number, to_number=None, actor=by)
    aliases.delete(found)
    return number


# ------------------------------------------------------------------------------------------- yank


def yank(session: Session, ref: str | Ref, reason: str | None = None) -> Version:
    """Mark a ready version yanked: it stops being `latest`, but `ns/name:N` still resolves to it."""
    if reason is not None:
        limits.check_text(reason, "yank reason", limits.MAX_YANK_REASON_LENGTH)
    version = require_ready(resolve(session, ref))
    if not version.yanked:
        version.yanked_at = utcnow()
        version.yank_reason = reason
        events.version_yanked(session, version)
    return version


def unyank(session: Session, ref: str | Ref) -> Version:
    version = resolve(session, ref)
    version.yanked_at = None
    version.yank_reason = None
    return version
