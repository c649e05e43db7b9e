"""Queries over versions, the aliases that point at them and the blob rows they reference."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .db import utcnow
from .models import Adapter, Alias, Blob, Version, VersionStatus
from .repository import dialect_insert


class VersionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, version_id: int, *, for_update: bool = False) -> Version | None:
        query = sa.select(Version).where(Version.id == version_id)
        if for_update:
            query = query.with_for_update(of=Version).execution_options(populate_existing=True)
        return self.session.scalar(query)

    def add(self, version: Version) -> Version:
        self.session.add(version)
        self.session.flush()
        return version

    def by_number(self, adapter: Adapter, number: int) -> Version | None:
        return self.session.scalar(
            sa.select(Version).where(Version.adapter_id == adapter.id, Version.number == number)
        )

    def latest_ready(self, adapter: Adapter) -> Version | None:
        """The newest ready version that is not yanked: what `ns/name` means."""
        return self.session.scalar(
            sa.select(Version)
            .where(
                Version.adapter_id == adapter.id,
                Version.status == VersionStatus.READY.value,
                Version.yanked_at.is_(None),
            )
            .order_by(Version.number.desc())
            .limit(1)
        )

    def by_digest(self, adapter: Adapter, digest: str) -> Version | None:
        """The version whose content, source or artifact has this digest (ready ones first, then the
        newest)."""
        return self.session.scalar(
            sa.select(Version)
            .where(
                Version.adapter_id == adapter.id,
                sa.or_(
                    Version.content_digest == digest,
                    Version.source_digest == digest,
                    Version.artifact_digest == digest,
                ),
            )
            .order_by((Version.status == VersionStatus.READY.value).desc(), Version.number.desc())
            .limit(1)
        )

    def live_by_content(self, adapter: Adapter, digest: str) -> Version | None:
        """The version (not failed) that holds exactly this content (its content digest), if any: a
        re-push returns it."""
        return self.session.scalar(
            sa.select(Version).where(
                Version.adapter_id == adapter.id,
                Version.content_digest == digest,
                Version.status != VersionStatus.FAILED.value,
            )
        )

    def for_adapter(
        self, adapter: Adapter, *, after: int | None = None, limit: int | None = None
    ) -> Sequence[Version]:
        """The adapter's versions by number: the first `limit` after number `after`."""
        query = sa.select(Version).where(Version.adapter_id == adapter.id).order_by(Version.number)
        if after is not None:
            query = query.where(Version.number > after)
        if limit is not None:
            query = query.limit(limit)
        return self.session.scalars(query).all()

    def summary(self, adapter_ids: Sequence[int]) -> dict[int, tuple[int, int | None]]:
        """Per adapter: (number of versions, number of the latest ready unyanked version)."""
        if not adapter_ids:
            return {}
        is_latest = sa.and_(Version.status == VersionStatus.READY.value, Version.yanked_at.is_(None))
        rows = self.session.execute(
            sa.select(
                Version.adapter_id,
                sa.func.count(),
                sa.func.max(sa.case((is_latest, Version.number))),
            )
            .where(Version.adapter_id.in_(adapter_ids))
            .group_by(Version.adapter_id)
        )
        return {adapter_id: (count, latest) for adapter_id, count, latest in rows}


class AliasRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, adapter: Adapter, name: str) -> Alias | None:
        return self.session.get(Alias, (adapter.id, name))

    def set(self, adapter: Adapter, name: str, version: Version, *, by: str | None) -> Alias:
        """Point alias `name` at `version`, creating or moving it."""
        self.session.execute(
            dialect_insert(self.session, Alias)
            .values(adapter_id=adapter.id, name=name, version_id=version.id, updated_by=by)
            .on_conflict_do_update(
                index_elements=["adapter_id", "name"],
                set_={"version_id": version.id, "updated_by": by, "updated_at": utcnow()},
            )
        )
        alias = self.session.get(Alias, (adapter.id, name), populate_existing=True)
        assert alias is not None
        return alias

    def delete(self, alias: Alias) -> None:
        self.session.delete(alias)
        self.session.flush()

    def for_adapter(self, adapter: Adapter) -> Sequence[Alias]:
        return self.session.scalars(
            sa.select(Alias).where(Alias.adapter_id == adapter.id).order_by(Alias.name)
        ).all()

    def by_adapter_ids(self, adapter_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per adapter: alias name -> version number."""
        if not adapter_ids:
            return {}
        rows = self.session.execute(
            sa.select(Alias.adapter_id, Alias.name, Version.number)
            .join(Version, Version.id == Alias.version_id)
            .where(Alias.adapter_id.in_(adapter_ids))
            .order_by(Alias.name)
        )
        result: dict[int, dict[str, int]] = {}
        for adapter_id, name, number in rows:
            result.setdefault(adapter_id, {})[name] = number
        return result


class BlobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, digest: str) -> Blob | None:
        return self.session.get(Blob, digest)

    def ensure(self, digest: str, size: int) -> None:
        """Record a blob that is already in storage (idempotent)."""
        self.session.execute(
            dialect_insert(self.session, Blob).values(sha256=digest, size=size).on_conflict_do_nothing()
        )
