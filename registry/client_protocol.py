"""What the CLI needs from a registry, local (`LocalRegistry`, client.py) or remote (`RemoteRegistry`,
remote.py): the `Registry` protocol, and the polling both use to wait for a version to settle."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import WaitTimeout

if TYPE_CHECKING:  # annotations only: the remote client imports this module without the database
    import datetime as dt
    from pathlib import Path

    from . import jobs
    from .engines import CompatFilter
    from .progress import Reporter
    from .push import GateFallback
    from .refs import AdapterName, Ref
    from .schemas import (
        AdapterView,
        AliasResult,
        PullResult,
        PushResult,
        ShowResult,
        TokenCreated,
        TokenView,
        VersionView,
        WorkerView,
    )

SETTLED = ("ready", "rejected", "failed")


class Registry(Protocol):
    """What the CLI needs from a registry, local or remote."""

    def push(
        self,
        path: str | Path,
        name: str | AdapterName,
        *,
        task: str | None = None,
        base_model: str | None = None,
        description: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        aliases: tuple[str, ...] | list[str] = (),
        codec: str | None = None,
        params: dict[str, Any] | None = None,
        on_gate_fail: GateFallback = "raw",
        created_by: str | None = None,
        reporter: Reporter | None = None,
    ) -> PushResult: ...

    def wait(
        self,
        ref: str | Ref,
        *,
        timeout: float | None = None,
        on_change: Callable[[VersionView], None] | None = None,
    ) -> VersionView: ...

    def pull(
        self, ref: str | Ref, out_dir: str | Path, *, force: bool = False, reporter: Reporter | None = None
    ) -> PullResult: ...

    def resolve(self, ref: str | Ref) -> VersionView: ...

    def list(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        compat: CompatFilter | None = None,
    ) -> list[AdapterView]: ...

    def show(self, ref: str | Ref) -> ShowResult: ...

    def adapter(self, name: str | AdapterName) -> AdapterView: ...

    def set_alias(self, target: str | Ref, alias: str, *, by: str | None = None) -> AliasResult: ...

    def remove_alias(self, name: str | AdapterName, alias: str) -> AliasResult: ...

    def yank(self, ref: str | Ref, reason: str | None = None) -> VersionView: ...

    def unyank(self, ref: str | Ref) -> VersionView: ...

    def create_token(
        self,
        name: str,
        scope: str,
        *,
        namespace: str | None = None,
        expires_at: dt.datetime | None = None,
        by: str | None = None,
    ) -> TokenCreated: ...

    def list_tokens(self, *, include_revoked: bool = False) -> list[TokenView]: ...

    def revoke_token(self, token_id: str) -> TokenView: ...

    def workers(self) -> list[WorkerView]: ...

    def list_jobs(self, *, queue: str | None = None, status: str | None = None) -> list[jobs.JobView]: ...

    def retry_job(self, job_id: int) -> jobs.JobView: ...

    def cancel_job(self, job_id: int) -> jobs.JobView: ...

    def close(self) -> None: ...


def poll_until_settled(
    get: Callable[[], VersionView],
    *,
    timeout: float | None,
    on_change: Callable[[VersionView], None] | None,
    interval: tuple[float, float] = (0.1, 2.0),
) -> VersionView:
    """Call `get` until the version is ready, rejected or failed, backing off from interval[0] to
    interval[1] seconds; `on_change` sees each new (status, attempts)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wait, seen = interval[0], None
    while True:
        view = get()
        if (view.status, view.attempts) != seen:
            seen = (view.status, view.attempts)
            if on_change is not None:
                on_change(view)
        if view.status in SETTLED:
            return view
        if deadline is not None and time.monotonic() + wait > deadline:
            raise WaitTimeout(f"{view.ref} is still {view.status} after {timeout:g} s")
        time.sleep(wait)
        wait = min(wait * 1.5, interval[1])
