"""Queries over the registry's tables. Repositories read and write through the caller's session and
never commit: the caller owns the transaction (one per CLI command or API request)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .db import utcnow
from .models import Adapter, AdapterTag, Alias, Blob, Version, VersionStatus
from .refs import AdapterName


def _insert(session: Session, model: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - make_engine accepts only these two
        raise NotImplementedError(dialect)
    return insert(model)


class AdapterRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: AdapterName) -> Adapter | None:
        return self.session.scalar(
            sa.select(Adapter).where(Adapter.namespace == name.namespace, Adapter.name == name.name)
        )

    def ensure(
        self, name: AdapterName, *, task: str, base_model: str | None, description: str | None
    ) -> Adapter:
        """The adapter called `name`, created with these fields if it does not exist. Safe under races:
        concurrent creators insert with ON CONFLICT DO NOTHING and all read the one row that won."""
        self.session.execute(
            _insert(self.session, Adapter)
            .values(
                namespace=name.namespace,
                name=name.name,
                task=task,
                base_model=base_model,
                description=description,
            )
            .on_conflict_do_nothing(index_elements=["namespace", "name"])
        )
        adapter = self.get(name)
        assert adapter is not None  # inserted above or by a concurrent transaction that committed
        return adapter

    def lock(self, adapter: Adapter) -> Adapter:
        """Take the adapter's row lock (PostgreSQL; SQLite already holds the database write lock) and
        reload it, so what follows in this transaction sees every version committed before."""
        locked = self.session.scalar(
            sa.select(Adapter)
            .where(Adapter.id == adapter.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        assert locked is not None
        return locked

    def next_version_number(self, adapter: Adapter) -> int:
        """Hand out the next version number. The UPDATE holds the row lock until commit, so concurrent
        pushes to one adapter get consecutive numbers; a rolled-back push gives its number back."""
        number = self.session.scalar(
            sa.update(Adapter)
            .where(Adapter.id == adapter.id)
            .values(last_version=Adapter.last_version + 1, updated_at=utcnow())
            .returning(Adapter.last_version)
        )
        assert number is not None
        self.session.refresh(adapter, ["last_version", "updated_at"])
        return number

    def add_tags(self, adapter: Adapter, tags: Iterable[str]) -> None:
        rows = [{"adapter_id": adapter.id, "tag": tag} for tag in sorted(set(tags))]
        if rows:
            self.session.execute(_insert(self.session, AdapterTag).values(rows).on_conflict_do_nothing())
            self.session.refresh(adapter, ["tags"])

    def search(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
    ) -> Sequence[Adapter]:
        query = sa.select(Adapter).order_by(Adapter.namespace, Adapter.name)
        if namespace is not None:
            query = query.where(Adapter.namespace == namespace)
        if task is not None:
            query = query.where(Adapter.task == task)
        if base_model is not None:
            query = query.where(Adapter.base_model == base_model)
        if tag is not None:
            query = query.where(sa.exists().where(AdapterTag.adapter_id == Adapter.id, AdapterTag.tag == tag))
        return self.session.scalars(query).all()


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
        """The version whose source or artifact has this digest (ready ones first, then the newest)."""
        return self.session.scalar(
            sa.select(Version)
            .where(
                Version.adapter_id == adapter.id,
                sa.or_(Version.source_digest == digest, Version.artifact_digest == digest),
            )
            .order_by((Version.status == VersionStatus.READY.value).desc(), Version.number.desc())
            .limit(1)
        )

    def live_by_source(self, adapter: Adapter, digest: str) -> Version | None:
        """The version (not failed) that holds exactly this content, if any: a re-push returns it."""
        return self.session.scalar(
            sa.select(Version).where(
                Version.adapter_id == adapter.id,
                Version.source_digest == digest,
                Version.status != VersionStatus.FAILED.value,
            )
        )

    def for_adapter(self, adapter: Adapter) -> Sequence[Version]:
        return self.session.scalars(
            sa.select(Version).where(Version.adapter_id == adapter.id).order_by(Version.number)
        ).all()

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
            _insert(self.session, Alias)
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
            _insert(self.session, Blob).values(sha256=digest, size=size).on_conflict_do_nothing()
        )
