"""Request and response bodies of the API that are not the registry's own views (those are reused as
they are: `AdapterView`, `VersionView`, `PushResult`, `AliasResult`, `TokenView`, `TokenCreated`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.registry import limits
from adapters.registry.refs import DIGEST_PATTERN, NAME_PATTERN
from adapters.registry.schemas import AdapterView, TokenView, VersionView, WorkerView

NAME = rf"^{NAME_PATTERN}$"
DIGEST = rf"^{DIGEST_PATTERN}$"


class Problem(BaseModel):
    """An error, as RFC 9457 problem details. `type` is stable per kind of error; `code` is its last
    path segment, for clients that switch on it."""

    type: str = Field(
        description="URI naming the kind of problem, e.g. https://adapters.dev/problems/adapter-not-found"
    )
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    code: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Failing fields (validation errors)."
    )


class AdapterPage(BaseModel):
    adapters: list[AdapterView]
    next: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


class VersionPage(BaseModel):
    versions: list[VersionView]
    next: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class WorkerList(BaseModel):
    workers: list[WorkerView]


class AliasTarget(BaseModel):
    """Where an alias points: a version number, or a ref of this adapter (`ns/name@other-alias`, ...)."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, le=999_999_999)
    ref: str | None = Field(default=None, max_length=256)


class YankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=limits.MAX_YANK_REASON_LENGTH)


class RetentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep: int = Field(ge=1, le=1_000_000, description="How many of the newest versions to keep.")
    save: bool = Field(
        default=False, description="Also make it the adapter's setting, applied after each push."
    )


class LabelsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: dict[str, str] = Field(default_factory=dict, max_length=limits.MAX_LABELS)
    remove: list[str] = Field(default_factory=list, max_length=limits.MAX_LABELS)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="What the token is for, e.g. ci or team-a-deploy.")
    scope: Literal["read", "write", "admin"]
    namespace: str | None = Field(default=None, pattern=NAME, description="Limit the token to one namespace.")
    expires_at: dt.datetime | None = None


class TokenList(BaseModel):
    tokens: list[TokenView]


class PushMetadata(BaseModel):
    """The `metadata` part of an upload: the push's options and the sha256 of each file part."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, pattern=NAME)
    base_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.MAX_BASE_MODEL_BYTES,
        description=f"At most {limits.MAX_BASE_MODEL_BYTES} bytes in UTF-8, no control characters.",
    )
    description: str | None = Field(default=None, max_length=limits.MAX_DESCRIPTION_LENGTH)
    tags: list[str] = Field(default_factory=list, max_length=limits.MAX_TAGS)
    aliases: list[str] = Field(default_factory=list, max_length=limits.MAX_ALIASES)
    codec: str | None = Field(
        default=None,
        max_length=limits.MAX_CODEC_NAME_LENGTH,
        description="nola or raw; default: the server's (nola unless configured)",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    on_gate_fail: Literal["raw", "reject"] = "raw"
    labels: dict[str, str] = Field(default_factory=dict, max_length=limits.MAX_LABELS)
    base_model_revision: str | None = Field(default=None, max_length=limits.MAX_REVISION_LENGTH)
    config_sha256: str = Field(pattern=DIGEST, description="sha256 of the `config` part.")
    weights_sha256: str = Field(pattern=DIGEST, description="sha256 of the `weights` part.")
    files: dict[str, Annotated[str, Field(pattern=DIGEST)]] = Field(
        default_factory=dict,
        max_length=limits.MAX_FOLDER_FILES,
        description="The `file` parts: file name -> sha256 (README.md, tokenizer files, "
        "new_embeddings.safetensors).",
    )
    source: str | None = Field(
        default=None,
        max_length=limits.MAX_SOURCE_LABEL_LENGTH,
        description="How error messages name the upload (the client's path).",
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
