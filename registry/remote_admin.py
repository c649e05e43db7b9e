"""The administrative operations of `RemoteRegistry` (a mixin on its HTTP session): tokens, workers
and jobs. The local counterpart is admin_client.py."""

from __future__ import annotations

import datetime as dt
import re

from .errors import TokenNotFound
from .job_views import JobView
from .refs import check_name
from .remote_session import RemoteSession
from .schemas import TokenCreated, TokenView, WorkerView


class RemoteAdminMethods(RemoteSession):
    def create_token(
        self,
        name: str,
        scope: str,
        *,
        namespace: str | None = None,
        expires_at: dt.datetime | None = None,
        by: str | None = None,
    ) -> TokenCreated:
        check_name(name, "token name")
        if namespace is not None:
            check_name(namespace, "namespace")
        body = {
            "name": name,
            "scope": scope,
            "namespace": namespace,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        return TokenCreated.model_validate(self._json("POST", "/v1/tokens", json=body))

    def list_tokens(self, *, include_revoked: bool = False) -> list[TokenView]:
        body = self._json("GET", "/v1/tokens", params={"include_revoked": include_revoked})
        return [TokenView.model_validate(t) for t in body["tokens"]]

    def workers(self) -> list[WorkerView]:
        return [WorkerView.model_validate(w) for w in self._json("GET", "/v1/workers")["workers"]]

    def list_jobs(self, *, queue: str | None = None, status: str | None = None) -> list[JobView]:
        params = {k: v for k, v in {"queue": queue, "status": status}.items() if v is not None}
        return [JobView.model_validate(j) for j in self._json("GET", "/v1/jobs", params=params)["jobs"]]

    def retry_job(self, job_id: int) -> JobView:
        return JobView.model_validate(self._json("POST", f"/v1/jobs/{int(job_id)}/retry"))

    def cancel_job(self, job_id: int) -> JobView:
        return JobView.model_validate(self._json("POST", f"/v1/jobs/{int(job_id)}/cancel"))

    def revoke_token(self, token_id: str) -> TokenView:
        if not re.fullmatch(r"[0-9a-f]{12}", token_id):
            raise TokenNotFound(f"no token {token_id!r}")
        return TokenView.model_validate(self._json("DELETE", f"/v1/tokens/{token_id}", idempotent=True))
