"""One settings object for every entry point (CLI, API, worker), read from ADAPTERS_* variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in examples and must never guard a real deployment.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "change-this", "placeholder", "secret", "password", "minioadmin"}
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADAPTERS_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".adapters",
        description="Folder for the embedded registry (SQLite database and blob folder) and caches.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means a SQLite file under ADAPTERS_HOME (embedded mode).",
    )
    storage_url: str = Field(
        default="",
        description="Blob store: a folder path, file:///path, or s3://bucket/prefix "
        "(standard AWS credential chain; AWS_ENDPOINT_URL for MinIO and other S3-compatible stores). "
        "Empty means a folder under ADAPTERS_HOME.",
    )
    url: str = Field(default="", description="Base URL of a remote registry API; empty means embedded mode.")
    device: str | None = Field(
        default=None, description="Device for compression: cpu, cuda or cuda:N (default: CUDA when present)."
    )
    token: SecretStr | None = Field(default=None, description="Bearer token for the remote API.")
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0, description="Largest accepted adapter upload.")
    models_dir: Path | None = Field(
        default=None,
        description="Base models on this machine, as <dir>/<org>/<name> or <dir>/<org>--<name> (the Hugging "
        "Face cache is searched after it): compression distills against them and gates on held-out "
        "agreement.",
    )
    calibration_texts: Path | None = Field(
        default=None,
        description="Calibration texts (.txt or .jsonl) for compression; default: the packaged corpus.",
    )

    # How pushes get compressed.
    default_codec: str = Field(
        default="nola",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="Codec of pushes that name none: nola (the smallest size that passes the fidelity "
        "gate, the source when none does) or raw (lossless).",
    )
    compression: Literal["auto", "inline", "queue"] = Field(
        default="auto",
        description="inline: the process that pushes runs the codec; queue: pushes stay pending until "
        "an `adapters worker` claims them; auto: inline on SQLite, queue on PostgreSQL.",
    )

    # The API server.
    api_host: str = Field(default="127.0.0.1", description="Address `adapters serve` listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port `adapters serve` listens on.")
    allow_anonymous_read: bool = Field(
        default=False, description="Let requests without a token list, show and pull (read scope)."
    )
    db_pool_size: int = Field(default=10, ge=1, description="Database connections a server process keeps.")
    retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After of a 503 (database or blob store unreachable)."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Server and worker logs.")
    log_level: str = Field(default="INFO", description="Server and worker log level.")

    # Compression workers.
    worker_lease_seconds: float = Field(
        default=60,
        gt=0,
        description="How long a worker may miss heartbeats (it beats every third of this) before "
        "other workers retry its job.",
    )
    worker_max_attempts: int = Field(default=3, ge=1, description="Codec runs per version before it fails.")
    worker_backoff_seconds: float = Field(
        default=10, ge=0, description="Wait before retry n: this times 2**(n-1), at most 10 minutes."
    )
    worker_poll_seconds: float = Field(default=2, gt=0, description="Idle wait between queue polls.")
    worker_deliver_events: bool = Field(
        default=True, description="Also deliver webhook events (the `events` queue) besides compressing."
    )
    worker_compress: bool = Field(
        default=True, description="Compress (false: an events-only worker, delivering webhooks only)."
    )
    webhook_max_attempts: int = Field(default=8, ge=1, description="Deliveries of one event tried at most.")
    webhook_backoff_seconds: int = Field(
        default=2, ge=0, description="Retry n of a webhook delivery waits this ** (n + 1) seconds."
    )
    webhook_event_retention_seconds: float = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="Outbox events older than this are pruned once no delivery of theirs is waiting or "
        "running (an event still being retried is kept); one the delivery log still shows stays with it.",
    )
    webhook_delivery_retention_seconds: float = Field(
        default=30 * 24 * 3600,
        ge=0,
        description="Webhook delivery-log rows older than this are pruned.",
    )
    worker_grace_seconds: float = Field(
        default=30, ge=0, description="On SIGTERM: time the current job gets to finish before it is released."
    )
    worker_live_seconds: float = Field(
        default=30,
        ge=1,
        description="A worker not heard from for this long counts as gone (it refreshes its presence every "
        "third of this).",
    )
    worker_capability_wait_seconds: float = Field(
        default=300,
        ge=0,
        description="How long a version whose base model no live worker holds waits for one; then any "
        "worker compresses it without the model (data-free), and its record says so.",
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of a worker's /metrics; 0 turns it off."
    )
    extra_codecs: str = Field(
        default="",
        description="Comma-separated modules to import before running codecs (a hook for codecs that "
        "register themselves; the tests use it for a deliberately slow codec).",
    )

    # The CLI against a registry API.
    client_retries: int = Field(
        default=3,
        ge=0,
        description="More tries of an idempotent API call (reads, alias moves, yanks, downloads) after "
        "a 502/503/504 or a dropped connection.",
    )
    client_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Wait before retry n: this times 2**(n-1), or the server's Retry-After; at most 30 s.",
    )

    client_cache_dir: Path | None = Field(
        default=None,
        description="The CLI's download cache: pulled files by sha256, cut transfers, what each ref named "
        "(default $XDG_CACHE_HOME/adapters, else ~/.cache/adapters).",
    )
    client_cache_max_bytes: int = Field(
        default=10 * 1024**3, ge=0, description="Size bound of the download cache; 0 turns it off."
    )

    # Leftovers of interrupted work.
    tmp_dir: Path | None = Field(
        default=None,
        description="Temporary folders of pushes, codec runs, reconstructions and uploads "
        "(default ADAPTERS_HOME/tmp); stale ones are swept.",
    )
    sweep_after_seconds: float = Field(
        default=24 * 3600,
        gt=0,
        description="Leftovers of interrupted work (temporary folders, partial blob files, cache and pull "
        "staging, incomplete S3 multipart uploads) older than this are removed.",
    )
    maintenance_interval_seconds: float = Field(
        default=15 * 60,
        gt=0,
        description="How often the API server and workers sweep leftovers (embedded commands: at most "
        "this often, as they start).",
    )

    # Reconstruction cache.
    cache_dir: Path | None = Field(
        default=None,
        description="Reconstructed PEFT files, by artifact digest (default ADAPTERS_HOME/cache).",
    )
    cache_max_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Size bound of the reconstruction cache; 0 turns it off."
    )

    # Read only to refuse placeholder credentials; boto3 reads the AWS chain itself.
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"), repr=False
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'registry.db'}"
        if not self.storage_url:
            self.storage_url = str(self.home / "blobs")
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache" / "reconstructed"
        self.cache_dir = self.cache_dir.expanduser()
        if self.client_cache_dir is None:
            xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            self.client_cache_dir = Path(xdg) / "adapters"
        self.client_cache_dir = self.client_cache_dir.expanduser()
        if self.tmp_dir is None:
            self.tmp_dir = self.home / "tmp"
        self.tmp_dir = self.tmp_dir.expanduser()
        return self

    @property
    def embedded(self) -> bool:
        """True when the registry runs in-process on SQLite (compression runs inline)."""
        return self.database_url.startswith("sqlite")

    @property
    def remote(self) -> bool:
        """True when commands talk to a registry API (ADAPTERS_URL) instead of a database."""
        return bool(self.url)

    @property
    def inline_compression(self) -> bool:
        """Whether a push runs its codec right away (else it waits in the queue for a worker)."""
        if self.compression == "auto":
            return self.embedded
        return self.compression == "inline"

    @property
    def codec_modules(self) -> list[str]:
        return [m.strip() for m in self.extra_codecs.split(",") if m.strip()]

    def placeholder_secrets(self) -> list[str]:
        """The settings whose secret is a known placeholder (a server refuses to start with any)."""
        found = []
        try:
            password = sa.make_url(self.database_url).password
        except sa.exc.ArgumentError:
            password = None
        if password is not None and str(password).lower() in PLACEHOLDER_SECRETS:
            found.append("ADAPTERS_DATABASE_URL (its password)")
        aws = self.aws_secret_access_key
        if aws is not None and aws.get_secret_value().lower() in PLACEHOLDER_SECRETS:
            found.append("AWS_SECRET_ACCESS_KEY")
        return found


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
