"""Queries over adapters: lookups, race-safe creation, version numbering, tags, and the filtered,
paged listings (`search`, and `summaries`, the one-query rows a listing shows)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from .db import utcnow
from .engines import CompatFilter
from .models import Adapter, AdapterTag, Alias, Version, VersionStatus
from .refs import AdapterName
from .repository import dialect_insert


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
            dialect_insert(self.session, Adapter)
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
            self.session.execute(
                dialect_insert(self.session, AdapterTag).values(rows).on_conflict_do_nothing()
            )
            self.session.refresh(adapter, ["tags"])

    @staticmethod
    def _filtered(
        query: sa.Select[Any],
        *,
        namespace: str | None,
        task: str | None,
        base_model: str | None,
        tag: str | None,
        name: AdapterName | None = None,
        after: AdapterName | None,
        limit: int | None,
        compat: CompatFilter | None = None,
        labels: dict[str, str] | None = None,
    ) -> sa.Select[Any]:
        query = query.order_by(Adapter.namespace, Adapter.name)
        if labels:
            from .labels import adapters_with

            query = query.where(adapters_with(labels))
        if compat is not None and compat.active:
            query = query.where(_latest_matches(compat))
        if name is not None:
            query = query.where(Adapter.namespace == name.namespace, Adapter.name == name.name)
        if namespace is not None:
            query = query.where(Adapter.namespace == namespace)
        if task is not None:
            query = query.where(Adapter.task == task)
        if base_model is not None:
            query = query.where(Adapter.base_model == base_model)
        if tag is not None:
            query = query.where(sa.exists().where(AdapterTag.adapter_id == Adapter.id, AdapterTag.tag == tag))
        if after is not None:
            query = query.where(sa.tuple_(Adapter.namespace, Adapter.name) > (after.namespace, after.name))
        if limit is not None:
            query = query.limit(limit)
        return query

    def search(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        after: AdapterName | None = None,
        limit: int | None = None,
        compat: CompatFilter | None = None,
    ) -> Sequence[Adapter]:
        """Adapters matching every given filter in name order: the first `limit` after `after`."""
        query = self._filtered(
            sa.select(Adapter),
            namespace=namespace,
            task=task,
            base_model=base_model,
            tag=tag,
            after=after,
            limit=limit,
            compat=compat,
        )
        return self.session.scalars(query).all()

    def summaries(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        name: AdapterName | None = None,
        after: AdapterName | None = None,
        limit: int | None = None,
        compat: CompatFilter | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """What a listing shows, as plain rows (no ORM objects: listings are the hot path): the
        adapters matching every filter in name order, each with the number of its latest version
        (newest ready, not yanked), its number of versions, its tags and its aliases, in one query."""
        postgresql = self.session.get_bind().dialect.name == "postgresql"
        array_agg = sa.func.json_agg if postgresql else sa.func.json_group_array
        object_agg = sa.func.json_object_agg if postgresql else sa.func.json_group_object
        latest = (
            sa.select(sa.func.max(Version.number))
            .where(
                Version.adapter_id == Adapter.id,
                Version.status == VersionStatus.READY.value,
                Version.yanked_at.is_(None),
            )
            .scalar_subquery()
        )
        count = sa.select(sa.func.count()).where(Version.adapter_id == Adapter.id).scalar_subquery()
        tags = (
            sa.select(array_agg(AdapterTag.tag)).where(AdapterTag.adapter_id == Adapter.id).scalar_subquery()
        )
        aliases = (
            sa.select(object_agg(Alias.name, Version.number))
            .join(Version, Version.id == Alias.version_id)
            .where(Alias.adapter_id == Adapter.id)
            .scalar_subquery()
        )
        columns = sa.select(
            Adapter.namespace,
            Adapter.name,
            Adapter.task,
            Adapter.base_model,
            Adapter.description,
            Adapter.last_version,
            Adapter.keep_versions,
            Adapter.created_at,
            Adapter.updated_at,
            latest.label("latest"),
            count.label("versions"),
            tags.label("tags"),
            aliases.label("aliases"),
        )
        query = self._filtered(
            columns,
            namespace=namespace,
            task=task,
            base_model=base_model,
            tag=tag,
            name=name,
            after=after,
            limit=limit,
            compat=compat,
            labels=labels,
        )
        return [
            dict(row) | {"tags": sorted(_json(row["tags"]) or []), "aliases": _json(row["aliases"]) or {}}
            for row in self.session.execute(query).mappings()
        ]


def _latest_matches(compat: CompatFilter) -> sa.Exists:
    """The adapter's latest version (newest ready, not yanked) has facts that pass the filter."""
    candidate = aliased(Version)
    newer = aliased(Version)
    is_latest = ~sa.exists().where(
        newer.adapter_id == candidate.adapter_id,
        newer.status == VersionStatus.READY.value,
        newer.yanked_at.is_(None),
        newer.number > candidate.number,
    )
    return sa.exists().where(
        candidate.adapter_id == Adapter.id,
        candidate.status == VersionStatus.READY.value,
        candidate.yanked_at.is_(None),
        is_latest,
        *compat.conditions(candidate.compat),
    )


def _json(value: Any) -> Any:
    """A JSON aggregate's value: decoded already (psycopg) or text (SQLite)."""
    return json.loads(value) if isinstance(value, str) else value
