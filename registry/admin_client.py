"""The admin operations of `LocalRegistry` (a mixin): live workers, the compression job queue,
tokens and authentication. The methods use the registry's database (`db`), its local user
(`principal`) and schema check (`_ready`)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from . import jobs, tokens, workers
from .db import retry_read
from .schemas import TokenCreated, TokenView, WorkerView

if TYPE_CHECKING:
    from .db import Database


class AdminMethods:
    db: Database
    principal: tokens.Principal
    worker_live_seconds: float

    def _ready(self) -> None:  # pragma: no cover - LocalRegistry's
        raise NotImplementedError

    def workers(self) -> list[WorkerView]:
        """The live compression workers, oldest first, with their devices and base models."""
        self._ready()
        with self.db.reading() as session:
            return workers.live_workers(session, live_seconds=self.worker_live_seconds)

    # --------------------------------------------------------------------------------- jobs (admin)

    def _jobs_admin(self, principal: tokens.Principal | None) -> tokens.Principal:
        self._ready()
        jobs.require_queue(self.db)
        who = principal or self.principal
        who.require("admin")  # across namespaces: a namespace admin does not see the queue
        return who

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        principal: tokens.Principal | None = None,
    ) -> list[jobs.JobView]:
        """The newest queue jobs first (PostgreSQL; admin)."""
        self._jobs_admin(principal)
        with self.db.reading() as session:
            return jobs.list_jobs(session, queue=queue, status=status, limit=limit)

    def retry_job(self, job_id: int, *, principal: tokens.Principal | None = None) -> jobs.JobView:
        """Run a failed or cancelled compression job again, its version pending again (admin)."""
        self._jobs_admin(principal)
        with self.db.transaction() as session:
            return jobs.retry(session, job_id)

    def cancel_job(self, job_id: int, *, principal: tokens.Principal | None = None) -> jobs.JobView:
        """Cancel a waiting compression job; its version fails with the reason (admin)."""
        who = self._jobs_admin(principal)
        with self.db.transaction() as session:
            return jobs.cancel(session, job_id, by=who.name)

    # ------------------------------------------------------------------------------------- tokens

    def create_token(
        self,
        name: str,
        scope: str,
        *,
        namespace: str | None = None,
        expires_at: dt.datetime | None = None,
        by: str | None = None,
        principal: tokens.Principal | None = None,
    ) -> TokenCreated:
        """Make a token as `principal` (default: this registry's local user, an admin)."""
        self._ready()
        principal = principal or (tokens.Principal.local(by) if by else self.principal)
        with self.db.transaction() as session:
            token, secret = tokens.create_token(
                session, name=name, scope=scope, namespace=namespace, expires_at=expires_at, by=principal
            )
            return TokenCreated(token=TokenView.of(token), secret=secret)

    @retry_read
    def list_tokens(
        self, *, include_revoked: bool = False, principal: tokens.Principal | None = None
    ) -> list[TokenView]:
        self._ready()
        with self.db.transaction() as session:
            found = tokens.list_tokens(
                session, by=principal or self.principal, include_revoked=include_revoked
            )
            return [TokenView.of(t) for t in found]

    def revoke_token(self, token_id: str, *, principal: tokens.Principal | None = None) -> TokenView:
        self._ready()
        with self.db.transaction() as session:
            return TokenView.of(tokens.revoke_token(session, token_id, by=principal or self.principal))

    @retry_read
    def authenticate(self, secret: str) -> tokens.Principal:
        """The principal a bearer token stands for (raises InvalidToken)."""
        self._ready()
        with self.db.reading() as session:
            return tokens.authenticate(session, secret)
