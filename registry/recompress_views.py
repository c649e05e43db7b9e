"""What `adapters recompress` reports (no database imports: the remote client uses it too)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# queued: a job will run it (a worker); recompressed: done here, the record changed; unchanged: the
# new run stored the same artifact; kept: the new run missed the fidelity gate, so the stored artifact
# stays; would-recompress: a dry run; already-queued: a recompression of it is waiting already;
# skipped: the version changed while the codec ran (another recompression won).
Action = Literal[
    "queued", "recompressed", "unchanged", "kept", "would-recompress", "already-queued", "skipped"
]


class Recompressed(BaseModel):
    ref: str = Field(description="ns/name:N")
    action: Action
    codec: str | None = Field(description="The codec of the stored artifact before")
    ratio: float | None = Field(description="Source bytes / artifact bytes before")
    new_codec: str | None = None
    new_ratio: float | None = None
    new_fidelity: dict[str, Any] | None = Field(default=None, description="The new record's fidelity")
    job: int | None = Field(default=None, description="The queued job (adapters jobs ls)")
    detail: str | None = None


class RecompressReport(BaseModel):
    codec: str = Field(description="The codec each version is re-encoded with")
    dry_run: bool = False
    versions: list[Recompressed] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RecompressRequest(BaseModel):
    """The body of POST .../recompress (every field optional)."""

    codec: str | None = Field(default=None, description="Default: the registry's default codec")
    dry_run: bool = Field(default=False, description="Only list what would be recompressed")
