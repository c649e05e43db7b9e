"""The core of `RemoteRegistry` (remote.py): the HTTP session to the API, problem details raised again
as the domain errors they name, and the retries of idempotent calls after 502/503/504 or a dropped
connection. The method groups (remote_read.py, remote_write.py, remote_admin.py) build on it."""

from __future__ import annotations

import time
from typing import Any, Self

import httpx

from .client_cache import ClientCache
from .errors import InvalidRequest, RegistryError, RemoteError, ServiceUnavailable, error_classes
from .refs import AdapterName, Ref
from .transfer import RETRY_STATUSES

MAX_RETRY_WAIT = 30.0


def as_ref(ref: str | Ref) -> Ref:
    return ref if isinstance(ref, Ref) else Ref.parse(ref)


def as_name(name: str | AdapterName) -> AdapterName:
    return name if isinstance(name, AdapterName) else AdapterName.parse(name)


class RemoteSession:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 300,
        retries: int = 3,
        backoff: float = 1.0,
        sweep_after: float | None = None,
        user_agent: str = "",
        cache: ClientCache | None = None,
    ) -> None:
        """`retries`: how many more times an idempotent call is tried after a 502/503/504 or a
        dropped connection, waiting the server's Retry-After or `backoff` * 2**(n-1) seconds.
        `cache`: the download cache pulls read from and add to (none: every pull downloads)."""
        self.url = url.rstrip("/")
        self.cache = cache
        self.retries = retries
        self.backoff = backoff
        self.sweep_after = sweep_after  # staging folders of killed pulls older than this are removed
        headers = {"User-Agent": user_agent or "adapters-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10),
            transport=httpx.HTTPTransport(retries=1),  # a refused connect, at once; then `_pause` backs off
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ plumbing

    def _error(self, response: httpx.Response) -> RegistryError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.get("code") or "")
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
        if code == "validation-error":
            return InvalidRequest(f"the server refused the request: {detail}")
        cls = error_classes().get(code)
        if cls is None:
            return RemoteError(f"{self.url} answered {response.status_code}: {detail}")
        return cls(detail)

    def _pause(self, idempotent: bool, tries: int, response: httpx.Response | None) -> bool:
        """After failed try number `tries` (with the answer, or None when the connection failed):
        when another is due, wait the server's Retry-After or backoff * 2**(tries-1) seconds and
        return True."""
        if not idempotent or tries > self.retries:
            return False
        wait = self.backoff * 2 ** (tries - 1)
        given = response.headers.get("retry-after", "") if response is not None else ""
        if given.isdigit():
            wait = float(given)
        time.sleep(min(wait, MAX_RETRY_WAIT))
        return True

    def _gave_up(self, error: RegistryError, tries: int) -> RegistryError:
        return type(error)(f"{error} (tried {tries} times)") if tries > 1 else error

    def _request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call, tried again after 502/503/504 or a dropped connection when it is idempotent
        (by default GET and HEAD; callers mark the others that are)."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        tries = 0
        while True:
            tries += 1
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if self._pause(idempotent, tries, None):
                    continue
                error = ServiceUnavailable(f"cannot reach the registry at {self.url}: {exc}")
                raise self._gave_up(error, tries) from None
            if response.status_code in RETRY_STATUSES and self._pause(idempotent, tries, response):
                continue
            if response.is_error:
                raise self._gave_up(self._error(response), tries)
            return response

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        return self._request(method, path, idempotent=idempotent, **kwargs).json()

    @staticmethod
    def _adapter_path(name: AdapterName) -> str:
        return f"/v1/adapters/{name.namespace}/{name.name}"
