"""`recompress` of `LocalRegistry`, on the database and blob store (recompress.py): a mixin, so
client.py stays about pushing and reading. The remote counterpart is remote_recompress.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import recompress
from .recompress_views import RecompressReport
from .refs import Ref
from .remote_recompress import recompress_target

if TYPE_CHECKING:
    from .codecs import CodecEnvironment
    from .db import Database
    from .storage import BlobStorage
    from .tokens import Principal


class RecompressMethods:
    db: Database
    storage: BlobStorage
    principal: Principal
    inline: bool
    default_codec: str
    device: str | None
    environment: CodecEnvironment | None
    worker_live_seconds: float

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    def temp_dir(self) -> Path | None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    def recompress(
        self,
        ref: str | Ref | None = None,
        *,
        namespace: str | None = None,
        codec: str | None = None,
        dry_run: bool = False,
        principal: Principal | None = None,
    ) -> RecompressReport:
        """Re-encode ready versions from their sources with `codec` (default: the registry's default
        codec): the one `ref` names, every one of a bare ns/name, or of `namespace` (admin of that
        namespace). Runs now where this registry compresses inline, else queues a job per version."""
        parsed, where = recompress_target(ref, namespace)
        self._ready()
        who = principal or self.principal
        who.require("admin", where)
        return recompress.recompress(
            self.db,
            self.storage,
            ref=parsed,
            namespace=None if parsed is not None else where,
            codec=codec or self.default_codec,
            dry_run=dry_run,
            inline=self.inline,
            by=who.name,
            device=self.device,
            environment=self.environment,
            tmp_dir=self.temp_dir(),
            live_seconds=self.worker_live_seconds,
        )
