"""Queries over the registry's tables. Repositories read and write through the caller's session and
never commit: the caller owns the transaction (one per CLI command or API request)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from .db import utcnow
from .engines import CompatFilter
from .models import (
    Adapter,
    AdapterTag,
    Alias,
    Blob,
    Token,
    Version,
    VersionStatus,
    WorkerBaseModel,
    WorkerRecord,
)
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


def db_now(session: Session) -> dt.datetime:
    """The database's clock on PostgreSQL (one clock for every process), this machine's on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(sa.select(sa.func.now()))
        assert now is not None
        return now
    return utcnow()


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


QUEUED = (VersionStatus.PENDING.value, VersionStatus.COMPRESSING.value)


def held_by_live_worker(model: sa.ColumnElement[str | None], live_since: dt.datetime) -> sa.Exists:
    """Whether some worker seen since `live_since` holds the base model `model`."""
    return sa.exists().where(
        WorkerBaseModel.base_model == model,
        WorkerRecord.id == WorkerBaseModel.worker_id,
        WorkerRecord.last_seen >= live_since,
    )


class QueueRepository:
    """A compression run's hold on its version: the run sets `compressing` with a lease (`leased_by`,
    `lease_expires_at`) that it renews while it works (the job queue, jobs.py, decides who runs what).
    Every write checks who holds the lease."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def now(self) -> dt.datetime:
        return db_now(self.session)

    def lease(self, version_id: int, worker: str, until: dt.datetime) -> Version:
        """Mark a locked job `compressing` for `worker` until `until`, counting the attempt."""
        self.session.execute(
            sa.update(Version)
            .where(Version.id == version_id)
            .values(
                status=VersionStatus.COMPRESSING.value,
                attempts=Version.attempts + 1,
                leased_by=worker,
                lease_expires_at=until,
                next_attempt_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        version = self.session.scalar(
            sa.select(Version).where(Version.id == version_id).execution_options(populate_existing=True)
        )
        assert version is not None
        return version

    def _held(self, version_id: int, worker: str) -> sa.Update:
        return (
            sa.update(Version)
            .where(
                Version.id == version_id,
                Version.status == VersionStatus.COMPRESSING.value,
                Version.leased_by == worker,
            )
            .execution_options(synchronize_session=False)
        )

    def renew(self, version_id: int, worker: str, until: dt.datetime) -> bool:
        """Extend a lease; False when `worker` no longer holds it."""
        return (
            self.session.execute(self._held(version_id, worker).values(lease_expires_at=until)).rowcount == 1
        )

    def requeue(
        self, version_id: int, worker: str, *, at: dt.datetime | None, error: str | None, count_attempt: bool
    ) -> bool:
        """Give a held job back to the queue (to be claimed from `at`); False if not held."""
        values: dict[str, Any] = {
            "status": VersionStatus.PENDING.value,
            "leased_by": None,
            "lease_expires_at": None,
            "next_attempt_at": at,
        }
        if error is not None:
            values["error"] = error
        if not count_attempt:
            values["attempts"] = Version.attempts - 1
        return self.session.execute(self._held(version_id, worker).values(**values)).rowcount == 1

    def fail(self, version_id: int, worker: str, *, error: str, now: dt.datetime) -> bool:
        """Mark a held job failed for good; False if not held."""
        values = {
            "status": VersionStatus.FAILED.value,
            "error": error,
            "processed_at": now,
            "leased_by": None,
            "lease_expires_at": None,
            "next_attempt_at": None,
        }
        return self.session.execute(self._held(version_id, worker).values(**values)).rowcount == 1


class TokenRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, token: Token) -> Token:
        self.session.add(token)
        self.session.flush()
        return token

    def by_secret_hash(self, digest: str) -> Token | None:
        return self.session.scalar(sa.select(Token).where(Token.secret_sha256 == digest))

    def by_public_id(self, public_id: str) -> Token | None:
        return self.session.scalar(sa.select(Token).where(Token.public_id == public_id))

    def list(self, *, namespace: str | None = None, include_revoked: bool = False) -> Sequence[Token]:
        query = sa.select(Token).order_by(Token.created_at, Token.id)
        if namespace is not None:
            query = query.where(Token.namespace == namespace)
        if not include_revoked:
            query = query.where(Token.revoked_at.is_(None))
        return self.session.scalars(query).all()

    def touch(self, token: Token, now: dt.datetime, *, every: dt.timedelta) -> None:
        """Record use, at most once per `every` (a write per request would serialize on the row)."""
        if token.last_used_at is None or now - token.last_used_at >= every:
            self.session.execute(
                sa.update(Token)
                .where(Token.id == token.id)
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )


class WorkerRepository:
    """The workers that announced themselves, and the base models each holds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def now(self) -> dt.datetime:
        return db_now(self.session)

    def announce(
        self, worker_id: str, *, host: str, device: str, models: Sequence[str], now: dt.datetime
    ) -> None:
        """Insert or refresh a worker's row, with exactly these base models."""
        self.session.execute(
            _insert(self.session, WorkerRecord)
            .values(id=worker_id, host=host, device=device, started_at=now, last_seen=now)
            .on_conflict_do_update(
                index_elements=["id"], set_={"host": host, "device": device, "last_seen": now}
            )
        )
        self.session.execute(sa.delete(WorkerBaseModel).where(WorkerBaseModel.worker_id == worker_id))
        if models:
            self.session.execute(
                sa.insert(WorkerBaseModel),
                [{"worker_id": worker_id, "base_model": model} for model in sorted(set(models))],
            )

    def touch(self, worker_id: str, now: dt.datetime) -> bool:
        """Mark a worker seen now; False when its row is gone (pruned while it was out of touch)."""
        result = self.session.execute(
            sa.update(WorkerRecord)
            .where(WorkerRecord.id == worker_id)
            .values(last_seen=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def remove(self, worker_id: str) -> None:
        self.session.execute(sa.delete(WorkerRecord).where(WorkerRecord.id == worker_id))

    def prune(self, live_since: dt.datetime) -> int:
        """Delete the rows of workers not seen since `live_since` (they died without saying so)."""
        result = self.session.execute(sa.delete(WorkerRecord).where(WorkerRecord.last_seen < live_since))
        return result.rowcount

    def live(self, live_since: dt.datetime) -> Sequence[WorkerRecord]:
        """The workers seen since `live_since`, oldest first, with their base models."""
        return self.session.scalars(
            sa.select(WorkerRecord)
            .where(WorkerRecord.last_seen >= live_since)
            .order_by(WorkerRecord.started_at, WorkerRecord.id)
        ).all()

    def holders(self, models: Sequence[str], live_since: dt.datetime) -> dict[str, int]:
        """Per base model: how many live workers hold it (models none holds are left out)."""
        if not models:
            return {}
        rows = self.session.execute(
            sa.select(WorkerBaseModel.base_model, sa.func.count())
            .join(WorkerRecord, WorkerRecord.id == WorkerBaseModel.worker_id)
            .where(WorkerBaseModel.base_model.in_(sorted(set(models))), WorkerRecord.last_seen >= live_since)
            .group_by(WorkerBaseModel.base_model)
        )
        return {str(model): int(count) for model, count in rows}

    def waiting(self, live_since: dt.datetime) -> dict[str, int]:
        """Per base model: pending versions that want it while no live worker holds it."""
        wanted = Version.wants_base_model
        rows = self.session.execute(
            sa.select(wanted, sa.func.count())
            .where(
                Version.status.in_(QUEUED),  # the partial index's predicate
                Version.status == VersionStatus.PENDING.value,
                wanted.is_not(None),
                ~held_by_live_worker(wanted, live_since),
            )
            .group_by(wanted)
        )
        return {str(model): int(count) for model, count in rows}
