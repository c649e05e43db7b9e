"""The registry's tables. Invariants live in the database too: name and digest formats, one version
number per adapter, one live version per source digest, aliases that point into their own adapter.

The migrations in `adapters.migrations` create exactly this schema; a test fails if the two drift.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, JSONType, UTCDateTime
from .limits import (
    LABEL_KEY_REGEX,
    MAX_BASE_MODEL_BYTES,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_REVISION_LENGTH,
)
from .refs import DIGEST_REGEX, NAME_REGEX


class VersionStatus(str, enum.Enum):
    PENDING = "pending"  # waiting for a codec run
    COMPRESSING = "compressing"  # claimed by a codec run
    READY = "ready"  # servable
    REJECTED = "rejected"  # missed the fidelity gate and the push demanded compression
    FAILED = "failed"  # an error; `error` says which

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in VersionStatus)


def _matches(column: str, regex: str) -> sa.ColumnElement[bool]:
    return sa.column(column).regexp_match(regex)


def _now() -> sa.FunctionElement[Any]:
    return sa.func.now()


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(64))
    task: Mapped[str] = mapped_column(sa.String(64))
    # limits.py bounds its UTF-8 bytes, so it never has more characters than that either.
    base_model: Mapped[str | None] = mapped_column(sa.String(MAX_BASE_MODEL_BYTES))
    description: Mapped[str | None] = mapped_column(sa.Text)
    # The highest version number handed out; bumped with UPDATE ... RETURNING, which serializes pushes.
    last_version: Mapped[int] = mapped_column(server_default=sa.text("0"))
    # Retention (lifecycle.py): after each push, versions beyond the newest N are deleted (never an
    # aliased or queued one); None keeps every version.
    keep_versions: Mapped[int | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())

    tags: Mapped[list[AdapterTag]] = relationship(
        back_populates="adapter", cascade="all, delete-orphan", order_by="AdapterTag.tag", lazy="selectin"
    )

    __table_args__ = (
        sa.UniqueConstraint("namespace", "name"),
        sa.CheckConstraint(_matches("namespace", NAME_REGEX), name="namespace_format"),
        sa.CheckConstraint(_matches("name", NAME_REGEX), name="name_format"),
        sa.CheckConstraint(_matches("task", NAME_REGEX), name="task_format"),
        sa.CheckConstraint("base_model IS NULL OR length(base_model) > 0", name="base_model_not_empty"),
        sa.CheckConstraint("last_version >= 0", name="last_version_not_negative"),
        sa.CheckConstraint("keep_versions IS NULL OR keep_versions >= 1", name="keep_versions_positive"),
        # Lookups by task or base model, paged in name order, read one index range.
        sa.Index("ix_adapters_task_namespace_name", "task", "namespace", "name"),
        sa.Index("ix_adapters_base_model_namespace_name", "base_model", "namespace", "name"),
    )

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"


class AdapterTag(Base):
    __tablename__ = "adapter_tags"

    adapter_id: Mapped[int] = mapped_column(
        sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(sa.String(64), primary_key=True, index=True)

    adapter: Mapped[Adapter] = relationship(back_populates="tags")

    __table_args__ = (sa.CheckConstraint(_matches("tag", NAME_REGEX), name="tag_format"),)


class Blob(Base):
    """A content-addressed blob in storage. The row is written only after the blob is stored."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    # When a deleted version last let go of it: garbage collection's grace period counts from here
    # (from `created_at` for blobs never released), so a blob is collected only once nothing has
    # referenced it for the whole grace period.
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(_matches("sha256", DIGEST_REGEX), name="sha256_format"),
        sa.CheckConstraint("size >= 0", name="size_not_negative"),
    )


class Version(Base):
    __tablename__ = "versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(sa.ForeignKey("adapters.id", ondelete="CASCADE"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16), server_default=VersionStatus.PENDING.value)
    # The canonical raw serialization of the adapter as pushed (compress.codec.canonical_bytes).
    source_digest: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("blobs.sha256"))
    source_size: Mapped[int] = mapped_column(sa.BigInteger)
    # What makes a version's identity: the source's digest when the version holds no other files, else
    # the sha256 of the source's digest and the other files' names and digests (folder_files.py).
    content_digest: Mapped[str] = mapped_column(
        sa.String(64), default=lambda context: context.get_current_parameters()["source_digest"]
    )
    # What the push asked for:
    # {"codec": ..., "params": {...}, "on_gate_fail": "raw" | "reject", "aliases": [...]}
    requested: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # What was stored: the artifact (for codec raw, the source blob itself) and how it was made.
    artifact_digest: Mapped[str | None] = mapped_column(
        sa.String(64), sa.ForeignKey("blobs.sha256"), index=True
    )
    artifact_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    codec: Mapped[str | None] = mapped_column(sa.String(32))
    codec_params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    fidelity: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    peft_config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # What serving engines need to know (compat.py), computed at push; NULL for older versions.
    compat: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(sa.Text)
    yanked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    yank_reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    created_by: Mapped[str | None] = mapped_column(sa.String(128))
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The job queue (see queue.py): codec runs so far, who holds the job and until when, and the
    # earliest time a retry may start.
    attempts: Mapped[int] = mapped_column(server_default=sa.text("0"))
    leased_by: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The base model the requested codec would use (None for codecs that use none): a live worker
    # that holds it gets the job; without one, any worker takes it after a wait (see workers.py).
    wants_base_model: Mapped[str | None] = mapped_column(sa.String(MAX_BASE_MODEL_BYTES))
    # The revision (commit, tag or branch) of the base model the adapter was trained on.
    base_model_revision: Mapped[str | None] = mapped_column(sa.String(MAX_REVISION_LENGTH))

    adapter: Mapped[Adapter] = relationship(lazy="joined", innerjoin=True)
    label_rows: Mapped[list[VersionLabel]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="VersionLabel.key", lazy="selectin"
    )
    # The files beside the LoRA weights (README, tokenizer, new embeddings), by name.
    files: Mapped[list[VersionFile]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="VersionFile.name", lazy="selectin"
    )

    __table_args__ = (
        sa.UniqueConstraint("adapter_id", "number"),
        # The target of aliases' composite foreign key (an alias points into its own adapter).
        sa.UniqueConstraint("adapter_id", "id"),
        # Idempotent pushes: one live (not failed) version per content per adapter.
        sa.Index(
            "uq_versions_adapter_id_content_digest_live",
            "adapter_id",
            "content_digest",
            unique=True,
            postgresql_where=sa.text("status <> 'failed'"),
            sqlite_where=sa.text("status <> 'failed'"),
        ),
        sa.CheckConstraint("number >= 1", name="number_positive"),
        sa.CheckConstraint(_matches("content_digest", DIGEST_REGEX), name="content_digest_format"),
        sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status_known"),
        sa.CheckConstraint(
            "source_size >= 0 AND (artifact_size IS NULL OR artifact_size >= 0)", name="sizes"
        ),
        sa.CheckConstraint(
            "status <> 'ready' OR (artifact_digest IS NOT NULL AND artifact_size IS NOT NULL "
            "AND codec IS NOT NULL)",
            name="ready_has_artifact",
        ),
        sa.CheckConstraint("yanked_at IS NULL OR status = 'ready'", name="only_ready_yanked"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        sa.CheckConstraint(
            "status <> 'compressing' OR (leased_by IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="compressing_is_leased",
        ),
        # The queue: only unfinished versions, so claiming stays fast however many are ready.
        sa.Index(
            "ix_versions_queue",
            "id",
            postgresql_where=sa.text("status IN ('pending', 'compressing')"),
            sqlite_where=sa.text("status IN ('pending', 'compressing')"),
        ),
    )

    @property
    def yanked(self) -> bool:
        return self.yanked_at is not None

    @property
    def ref(self) -> str:
        return f"{self.adapter.full_name}:{self.number}"

    @property
    def labels(self) -> dict[str, str]:
        return {row.key: row.value for row in self.label_rows}


class VersionLabel(Base):
    """A free-form key/value label on a version (training run, dataset, metric); see labels.py."""

    __tablename__ = "version_labels"

    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(MAX_LABEL_KEY_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(MAX_LABEL_VALUE_LENGTH))

    __table_args__ = (
        sa.CheckConstraint(_matches("key", LABEL_KEY_REGEX), name="key_format"),
        # Filters look a label up by key and value.
        sa.Index("ix_version_labels_key_value", "key", "value"),
    )


class VersionFile(Base):
    """A file a version holds beside its LoRA weights, stored losslessly as a blob (folder_files.py).
    The foreign key keeps the blob's row (and so its object) as long as a version holds it."""

    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)

    __table_args__ = (sa.CheckConstraint("size >= 0", name="size_not_negative"),)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}


class Alias(Base):
    """A movable name for one version of an adapter (`latest` is implicit and never stored)."""

    __tablename__ = "aliases"

    adapter_id: Mapped[int] = mapped_column(
        sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    updated_by: Mapped[str | None] = mapped_column(sa.String(128))
    # Only admins move or remove a protected alias (lifecycle.py).
    protected: Mapped[bool] = mapped_column(server_default=sa.false())

    version: Mapped[Version] = relationship(
        primaryjoin="Alias.version_id == Version.id", foreign_keys=[version_id], viewonly=True, lazy="joined"
    )

    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["adapter_id", "version_id"],
            ["versions.adapter_id", "versions.id"],
            name="fk_aliases_adapter_id_version_id_versions",
        ),
        sa.CheckConstraint(_matches("name", NAME_REGEX), name="name_format"),
        sa.CheckConstraint("name <> 'latest'", name="name_not_reserved"),
    )


class AliasEvent(Base):
    """One change of an alias: who moved it from which version to which, and when. Versions are named
    by number, which outlives a deleted version; `from_number` is None when the alias was created,
    `to_number` when it was removed."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(sa.ForeignKey("adapters.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    from_number: Mapped[int | None]
    to_number: Mapped[int | None]
    actor: Mapped[str | None] = mapped_column(sa.String(128))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())

    __table_args__ = (
        sa.CheckConstraint("from_number IS NOT NULL OR to_number IS NOT NULL", name="from_or_to"),
        # History reads one alias (or adapter) newest first.
        sa.Index("ix_alias_events_adapter_id_alias_id", "adapter_id", "alias", "id"),
    )


class WorkerRecord(Base):
    """A running compression worker, as it announced itself: refreshed by its heartbeat, deleted when it
    stops. A row not refreshed within the liveness window belongs to a worker that died."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    device: Mapped[str] = mapped_column(sa.String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now(), index=True)

    base_models: Mapped[list[WorkerBaseModel]] = relationship(
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="WorkerBaseModel.base_model",
        lazy="selectin",
    )


class WorkerBaseModel(Base):
    """A base model a worker can load. One row per (worker, model), so the queue asks "does a live worker
    hold this model" with the same plain SQL on PostgreSQL and SQLite."""

    __tablename__ = "worker_base_models"

    worker_id: Mapped[str] = mapped_column(sa.ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True)
    base_model: Mapped[str] = mapped_column(sa.String(MAX_BASE_MODEL_BYTES), primary_key=True, index=True)


class TokenScope(str, enum.Enum):
    READ = "read"  # list, show, resolve, pull
    WRITE = "write"  # read + push, aliases, yank
    ADMIN = "admin"  # write + tokens

    def __str__(self) -> str:
        return self.value


SCOPES = tuple(s.value for s in TokenScope)


class Token(Base):
    """An API token. Only the sha256 of the secret is stored; `public_id` names it in lists and logs."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(sa.String(16), unique=True)
    secret_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    scope: Mapped[str] = mapped_column(sa.String(16))
    # None: every namespace.
    namespace: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=_now())
    created_by: Mapped[str | None] = mapped_column(sa.String(128))
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(sa.column("scope").in_(SCOPES), name="scope_known"),
        sa.CheckConstraint(_matches("public_id", r"\A[0-9a-f]{12}\Z"), name="public_id_format"),
        sa.CheckConstraint(_matches("secret_sha256", DIGEST_REGEX), name="secret_sha256_format"),
        sa.CheckConstraint(_matches("name", NAME_REGEX), name="name_format"),
        sa.CheckConstraint(
            sa.or_(sa.column("namespace").is_(None), _matches("namespace", NAME_REGEX)),
            name="namespace_format",
        ),
    )
