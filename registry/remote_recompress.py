"""`recompress` of `RemoteRegistry`, over the API (api/routes/recompress.py): a mixin, like
remote_read.py and remote_write.py. The local counterpart is recompress_client.py."""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest
from .recompress_views import RecompressReport, RecompressRequest
from .refs import Ref, check_name


def recompress_target(ref: str | Ref | None, namespace: str | None) -> tuple[Ref | None, str]:
    """The parsed ref (None for a namespace) and the namespace it is in; InvalidRequest/InvalidRef
    before anything is touched."""
    if (ref is None) == (namespace is None):
        raise InvalidRequest("give either a ref (ns/name:N or ns/name) or a namespace, not both")
    if ref is not None:
        parsed = ref if isinstance(ref, Ref) else Ref.parse(ref)
        return parsed, parsed.adapter.namespace
    return None, check_name(namespace, "namespace")  # type: ignore[arg-type]


class RemoteRecompressMethods:
    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - RemoteRegistry's

    def resolve(self, ref: str | Ref) -> Any:
        raise NotImplementedError  # pragma: no cover - RemoteRegistry's

    def recompress(
        self,
        ref: str | Ref | None = None,
        *,
        namespace: str | None = None,
        codec: str | None = None,
        dry_run: bool = False,
    ) -> RecompressReport:
        parsed, where = recompress_target(ref, namespace)
        if parsed is None:
            path = f"/v1/namespaces/{where}/recompress"
        else:
            path = f"/v1/adapters/{parsed.adapter.namespace}/{parsed.adapter.name}"
            if not parsed.is_latest:
                path += f"/versions/{self.resolve(parsed).number}"
            path += "/recompress"
        body = RecompressRequest(codec=codec, dry_run=dry_run).model_dump()
        return RecompressReport.model_validate(self._json("POST", path, json=body, idempotent=False))
