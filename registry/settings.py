"""One settings object for every entry point (CLI, API, worker), read from ADAPTERS_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    token: SecretStr | None = Field(default=None, description="Bearer token for the remote API.")
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0, description="Largest accepted adapter upload.")
    models_dir: Path | None = Field(
        default=None,
        description="Base models on this machine, as <dir>/<org>/<name> or <dir>/<org>--<name>: compression "
        "distills against them and gates on held-out agreement.",
    )
    calibration_texts: Path | None = Field(
        default=None,
        description="Calibration texts (.txt or .jsonl) for compression; default: the packaged corpus.",
    )
    device: str | None = Field(default=None, description="Device for compression: cpu, cuda (default: auto).")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'registry.db'}"
        if not self.storage_url:
            self.storage_url = str(self.home / "blobs")
        return self

    @property
    def embedded(self) -> bool:
        """True when the registry runs in-process on SQLite (compression runs inline)."""
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
