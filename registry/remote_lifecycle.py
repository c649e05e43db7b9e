"""The lifecycle and lineage operations of `RemoteRegistry`, over the API (see api/routes/lifecycle.py).
A mixin, like remote_read.py and remote_write.py. Garbage collection is not here: it works on the
database and blob store directly (`adapters gc`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import labels
from .errors import InvalidRequest
from .lifecycle import check_keep
from .lifecycle_schemas import AliasHistory, AliasProtection, Deleted, LabelsView
from .refs import AdapterName, Ref, check_alias


def _name(name: str | AdapterName) -> AdapterName:
    return name if isinstance(name, AdapterName) else AdapterName.parse(name)


def _path(name: AdapterName) -> str:
    return f"/v1/adapters/{name.namespace}/{name.name}"


class RemoteLifecycleMethods:
    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - RemoteRegistry's

    def resolve(self, ref: str | Ref) -> Any:
        raise NotImplementedError  # pragma: no cover - RemoteRegistry's

    def delete(self, ref: str | Ref, *, force: bool = False, actor: str | None = None) -> Deleted:
        """Delete a version, or with a bare `ns/name` the adapter (the server records the token's name)."""
        parsed = ref if isinstance(ref, Ref) else Ref.parse(ref)
        path = _path(parsed.adapter)
        if not parsed.is_latest:
            path += f"/versions/{self.resolve(parsed).number}"
        params = {"force": "true"} if force else {}
        return Deleted.model_validate(self._json("DELETE", path, params=params, idempotent=False))

    def retain(self, name: str | AdapterName, keep: int | None = None, *, save: bool = False) -> Deleted:
        if keep is None:
            raise InvalidRequest("give how many versions to keep")
        body = {"keep": check_keep(keep), "save": save}
        return Deleted.model_validate(self._json("POST", f"{_path(_name(name))}/retention", json=body))

    def clear_retention(self, name: str | AdapterName) -> Deleted:
        return Deleted.model_validate(
            self._json("DELETE", f"{_path(_name(name))}/retention", idempotent=True)
        )

    def alias_history(self, name: str | AdapterName, alias: str | None = None) -> AliasHistory:
        params = {}
        if alias is not None:
            params["alias"] = check_alias(alias)
        return AliasHistory.model_validate(
            self._json("GET", f"{_path(_name(name))}/alias-history", params=params)
        )

    def protect_alias(self, name: str | AdapterName, alias: str, protected: bool = True) -> AliasProtection:
        check_alias(alias)
        path = f"{_path(_name(name))}/aliases/{alias}/protection"
        return AliasProtection.model_validate(
            self._json("PUT" if protected else "DELETE", path, idempotent=True)
        )

    def label(
        self, ref: str | Ref, set_: Mapping[str, str] | None = None, remove: Sequence[str] = ()
    ) -> LabelsView:
        body = {"set": labels.check_labels(dict(set_ or {})), "remove": [labels.check_key(k) for k in remove]}
        version = self.resolve(ref)
        path = f"{_path(_name(version.adapter))}/versions/{version.number}/labels"
        return LabelsView.model_validate(self._json("PATCH", path, json=body, idempotent=True))
