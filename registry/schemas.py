"""What the registry's operations return: plain, serializable views of adapters and versions.

The CLI prints them (`--json` dumps them as they are) and the API will return them; neither sees ORM
objects. Build views inside the transaction that loaded the rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from .models import Adapter, Token, Version, VersionStatus, WorkerRecord


class View(BaseModel):
    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class CompressionView(View):
    """What a processed version's storage cost and what it was judged on, read off its fidelity
    record: whole-file sizes, the gate's basis and verdict, and the predictions it rests on."""

    ratio: float  # source file bytes / stored artifact bytes
    lora_ratio: float | None  # the LoRA factors' source bytes / their coefficient bytes
    fallback: str | None  # "raw": a compressed attempt missed the gate, the source is kept
    gate_passed: bool | None
    basis: str | None
    data_free: bool | None
    predictions: int | None
    estimate: float | None  # agreement, or the proxy's value when judged data-free
    bound: float | None  # the lower confidence bound on agreement
    reason: str | None

    @classmethod
    def of(cls, version: Version) -> CompressionView | None:
        if version.artifact_size is None and not version.fidelity:
            return None
        fidelity = version.fidelity or {}
        gate = fidelity.get("gate") if isinstance(fidelity.get("gate"), dict) else {}
        attempt = fidelity.get("attempt") or fidelity
        size = version.artifact_size or attempt.get("artifact_bytes")
        return cls(
            ratio=round(version.source_size / size, 3) if size else 1.0,
            lora_ratio=attempt.get("lora_ratio") if not fidelity.get("fallback") else None,
            fallback=fidelity.get("fallback"),
            gate_passed=fidelity.get("gate_passed"),
            basis=gate.get("basis"),
            data_free=gate.get("data_free"),
            predictions=gate.get("predictions"),
            estimate=gate.get("estimate"),
            bound=gate.get("bound"),
            reason=gate.get("reason"),
        )


class WaitingView(View):
    """A pending version that wants a base model: who can take it, and from when anyone can."""

    base_model: str
    live_workers: int  # live workers that hold the model (the job waits for one of them)
    # While no live worker holds the model: when any worker may take the job and compress it without
    # the model (None while a live worker holds it).
    without_model_from: dt.datetime | None


class VersionView(View):
    ref: str
    adapter: str
    number: int
    status: str
    source_digest: str
    source_size: int
    # The version's identity: the source's digest, or with other files (README, tokenizer, ...) a
    # digest over the source and them (folder_files.content_digest); `files` lists those files.
    content_digest: str = ""
    files: list[dict[str, Any]] = []
    artifact_digest: str | None
    artifact_size: int | None
    codec: str | None
    codec_params: dict[str, Any] | None
    fidelity: dict[str, Any] | None
    compression: CompressionView | None
    requested: dict[str, Any]
    error: str | None
    yanked: bool
    yank_reason: str | None
    yanked_at: dt.datetime | None
    aliases: list[str]
    peft_config: dict[str, Any]
    # Compatibility facts (registry/compat.py); None for versions pushed before they were recorded.
    compat: dict[str, Any] | None = None
    # Lineage (labels.py): free-form key/value labels, and the base model's revision.
    labels: dict[str, str] = Field(default_factory=dict)
    base_model_revision: str | None = None
    created_at: dt.datetime
    created_by: str | None
    processed_at: dt.datetime | None
    attempts: int
    # The base model the codec wants (workers that hold it get the job), and where the job runs or ran.
    wants_base_model: str | None = None
    worker: str | None = None
    device: str | None = None
    waiting: WaitingView | None = None

    def model_post_init(self, context: Any) -> None:
        if not self.content_digest:  # a view from a server (or a cache record) older than folders
            self.content_digest = self.source_digest

    @classmethod
    def of(
        cls,
        version: Version,
        aliases: list[str] | None = None,
        *,
        waiting: WaitingView | None = None,
        device: str | None = None,
    ) -> VersionView:
        """The view of a version row. `waiting` and, while compressing, `device` come from the workers
        table (workers.queue_states); a settled version's worker and device are in its record."""
        setup = (version.fidelity or {}).get("setup") or {}
        compressing = version.status == VersionStatus.COMPRESSING.value
        return cls(
            ref=version.ref,
            adapter=version.adapter.full_name,
            number=version.number,
            status=version.status,
            source_digest=version.source_digest,
            source_size=version.source_size,
            content_digest=version.content_digest or version.source_digest,
            files=[f.record() for f in version.files],
            artifact_digest=version.artifact_digest,
            artifact_size=version.artifact_size,
            codec=version.codec,
            codec_params=version.codec_params,
            fidelity=version.fidelity,
            compression=CompressionView.of(version),
            requested=version.requested,
            error=version.error,
            yanked=version.yanked,
            yank_reason=version.yank_reason,
            yanked_at=version.yanked_at,
            aliases=sorted(aliases or []),
            peft_config=version.peft_config,
            compat=version.compat,
            labels=version.labels,
            base_model_revision=version.base_model_revision,
            created_at=version.created_at,
            created_by=version.created_by,
            processed_at=version.processed_at,
            attempts=version.attempts,
            wants_base_model=version.wants_base_model,
            worker=version.leased_by if compressing else setup.get("worker"),
            device=device if compressing else setup.get("device"),
            waiting=waiting,
        )


class AdapterView(View):
    name: str
    namespace: str
    task: str
    base_model: str | None
    description: str | None
    tags: list[str]
    versions: int
    latest: int | None
    aliases: dict[str, int]
    # Retention (lifecycle.py): versions kept after each push; None keeps every one.
    keep_versions: int | None = None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(
        cls, adapter: Adapter, *, versions: int, latest: int | None, aliases: dict[str, int]
    ) -> AdapterView:
        return cls(
            name=adapter.full_name,
            namespace=adapter.namespace,
            task=adapter.task,
            base_model=adapter.base_model,
            description=adapter.description,
            tags=[t.tag for t in adapter.tags],
            versions=versions,
            latest=latest,
            aliases=dict(sorted(aliases.items())),
            keep_versions=adapter.keep_versions,
            created_at=adapter.created_at,
            updated_at=adapter.updated_at,
        )


def adapter_view(summary: dict[str, Any]) -> AdapterView:
    """An AdapterView from a listing row (`AdapterRepository.summaries`)."""
    return AdapterView(
        name=f"{summary['namespace']}/{summary['name']}",
        namespace=summary["namespace"],
        task=summary["task"],
        base_model=summary["base_model"],
        description=summary["description"],
        tags=summary["tags"],
        versions=summary["versions"],
        latest=summary["latest"],
        aliases=dict(sorted(summary["aliases"].items())),
        keep_versions=summary["keep_versions"],
        created_at=summary["created_at"],
        updated_at=summary["updated_at"],
    )


class PushResult(View):
    created: bool
    version: VersionView
    # The content was there, but its compression had been abandoned (its process died): this push ran it.
    resumed: bool = False


class PullResult(View):
    version: VersionView
    path: str
    files: list[str]


class ShowResult(View):
    adapter: AdapterView
    version: VersionView | None
    versions: list[VersionView]


class AliasResult(View):
    adapter: str
    alias: str
    version: int | None
    previous: int | None


class TokenView(View):
    id: str
    name: str
    scope: str
    namespace: str | None
    created_at: dt.datetime
    created_by: str | None
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, token: Token) -> TokenView:
        return cls(
            id=token.public_id,
            name=token.name,
            scope=token.scope,
            namespace=token.namespace,
            created_at=token.created_at,
            created_by=token.created_by,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(View):
    """A new token; `secret` is shown this once and stored nowhere."""

    token: TokenView
    secret: str


class WorkerView(View):
    """A live compression worker: where it runs and the base models it holds."""

    id: str
    host: str
    device: str
    base_models: list[str]
    started_at: dt.datetime
    last_seen: dt.datetime

    @classmethod
    def of(cls, worker: WorkerRecord) -> WorkerView:
        return cls(
            id=worker.id,
            host=worker.host,
            device=worker.device,
            base_models=[m.base_model for m in worker.base_models],
            started_at=worker.started_at,
            last_seen=worker.last_seen,
        )
