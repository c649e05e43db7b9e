"""The registry over its HTTP API: `RemoteRegistry` has the methods of `LocalRegistry` and returns the
same views, so every CLI command works against either with the same output.

Errors come back as problem details whose `code` names a domain error; they are raised again here as
that error, with the server's message. Whatever can be checked without the server (names, refs, the
files of a directory, the output folder) is checked first, with the embedded registry's messages.
Downloads are checked against the sha256 the server sends before anything is written. A download
keeps what it received in a `.part` file and continues from there with a `Range` request after a
cut, and goes through the client's download cache (registry/client_cache.py) when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from . import folder_files, limits, transfer
from . import labels as version_labels
from .client_cache import ClientCache
from .engines import CompatFilter
from .errors import (
    BlobCorrupted,
    InvalidAdapterUpload,
    InvalidRequest,
    RegistryError,
    RemoteError,
    ServiceUnavailable,
    TokenNotFound,
    VersionNotReady,
    error_classes,
)
from .job_views import JobView
from .output import install, prepare_output, staging_for, write_error
from .progress import Advance, Reporter, SilentReporter
from .refs import NAME_PATTERN, AdapterName, Ref, check_alias, check_name
from .remote_lifecycle import RemoteLifecycleMethods
from .remote_recompress import RemoteRecompressMethods
from .remote_webhooks import RemoteWebhookMethods
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
from .settings import Settings
from .storage import sha256_file
from .transfer import RETRY_STATUSES

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PULLED_FILES = ("adapter_config.json", "adapter_model.safetensors")
PAGE = 500
NAME = re.compile(NAME_PATTERN)
MAX_RETRY_WAIT = 30.0


class _Counting:
    """A file for httpx to stream from, reporting progress as it is read."""

    def __init__(self, fh: BinaryIO, advance: Advance) -> None:
        self.fh = fh
        self.advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:
        return self.fh.fileno()


def _check_files(config: Path, weights: Path) -> None:
    """The limits on an adapter's files that can be checked without reading them (the server checks
    everything again): the config's size and the safetensors header's declared length."""
    from adapters.compress.limits import MAX_CONFIG_BYTES, MAX_HEADER_BYTES  # no torch, unlike stfile

    size = config.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidAdapterUpload(f"{config}: {size} bytes is more than the limit of {MAX_CONFIG_BYTES}")
    if weights.name == WEIGHT_FILES[0]:
        with weights.open("rb") as fh:
            head = fh.read(8)
        declared = int.from_bytes(head, "little") if len(head) == 8 else 0
        if declared > MAX_HEADER_BYTES:
            raise InvalidAdapterUpload(
                f"{weights}: the safetensors header is {declared} bytes, more than the limit of "
                f"{MAX_HEADER_BYTES}"
            )


def _as_ref(ref: str | Ref) -> Ref:
    return ref if isinstance(ref, Ref) else Ref.parse(ref)


def _as_name(name: str | AdapterName) -> AdapterName:
    return name if isinstance(name, AdapterName) else AdapterName.parse(name)


class RemoteRegistry(RemoteLifecycleMethods, RemoteWebhookMethods, RemoteRecompressMethods):
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

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteRegistry:
        token = settings.token.get_secret_value() if settings.token is not None else None
        return cls(
            settings.url,
            token,
            retries=settings.client_retries,
            backoff=settings.client_backoff_seconds,
            sweep_after=settings.sweep_after_seconds,
            cache=ClientCache(settings.client_cache_dir, settings.client_cache_max_bytes)
            if settings.client_cache_max_bytes > 0 and settings.client_cache_dir is not None
            else None,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteRegistry:
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

    # -------------------------------------------------------------------------------------- writes

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
        codec: str | None = None,  # the server's default
        params: dict[str, Any] | None = None,
        on_gate_fail: str = "raw",
        created_by: str | None = None,  # the server records the token's name
        reporter: Reporter | None = None,
        labels: dict[str, str] | None = None,
        base_model_revision: str | None = None,
    ) -> PushResult:
        """Upload a PEFT directory as the next version of `name` (streamed, with each file's sha256)."""
        reporter = reporter or SilentReporter()
        adapter = _as_name(name)
        if task is not None:
            check_name(task, "task")
        limits.check_count(tuple(tags), "tags", limits.MAX_TAGS)
        for tag in tags:
            check_name(tag, "tag")
        limits.check_count(tuple(aliases), "aliases", limits.MAX_ALIASES)
        for alias in aliases:
            check_alias(alias)
        if base_model is not None:
            limits.check_base_model(base_model)
        if description is not None:
            limits.check_text(description, "description", limits.MAX_DESCRIPTION_LENGTH)
        version_labels.check_labels(labels or {})
        version_labels.check_revision(base_model_revision)
        folder = Path(path)
        if not folder.is_dir():
            raise InvalidAdapterUpload(f"{path}: not a directory")
        config = folder / CONFIG_FILE
        if not config.is_file():
            raise InvalidAdapterUpload(f"{path}: missing {CONFIG_FILE}")
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise InvalidAdapterUpload(f"{path}: missing {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})")
        _check_files(config, weights)
        # README, tokenizer, ...: names, count and sizes checked here, what they hold by the server.
        extras = folder_files.collect(folder, str(path), check_content=False)
        metadata = {
            "task": task,
            "base_model": base_model,
            "description": description,
            "tags": list(tags),
            "aliases": list(aliases),
            **({"codec": codec} if codec else {}),
            "params": dict(params or {}),
            "on_gate_fail": on_gate_fail,
            "labels": dict(labels or {}),
            "base_model_revision": base_model_revision,
            "config_sha256": sha256_file(config)[0],
            "weights_sha256": sha256_file(weights)[0],
            "source": str(path),
            # Only when there are some: servers from before folders refuse fields they do not know.
            **({"files": {f.name: f.sha256 for f in extras}} if extras else {}),
        }
        total = config.stat().st_size + weights.stat().st_size + sum(f.size for f in extras)
        with (
            reporter.task("uploading", total=total, unit="bytes") as advance,
            config.open("rb") as config_fh,
            weights.open("rb") as weights_fh,
            ExitStack() as opened,
        ):
            files = [
                ("metadata", (None, json.dumps(metadata).encode(), "application/json")),
                ("config", (CONFIG_FILE, _Counting(config_fh, advance), "application/json")),
                ("weights", (weights.name, _Counting(weights_fh, advance), "application/octet-stream")),
            ]
            for extra in extras:
                fh = opened.enter_context(extra.path.open("rb"))
                files.append(("file", (extra.name, _Counting(fh, advance), "application/octet-stream")))
            body = self._json("POST", f"{self._adapter_path(adapter)}/versions", files=files)
        return PushResult.model_validate(body)

    def wait(
        self,
        ref: str | Ref,
        *,
        timeout: float | None = None,
        on_change: Callable[[VersionView], None] | None = None,
    ) -> VersionView:
        """Poll until the version `ref` names is ready, rejected or failed."""
        from .client_protocol import poll_until_settled

        return poll_until_settled(lambda: self.resolve(ref), timeout=timeout, on_change=on_change)

    def set_alias(self, target: str | Ref, alias: str, *, by: str | None = None) -> AliasResult:
        ref = _as_ref(target)
        check_alias(alias)
        body = self._json(
            "PUT",
            f"{self._adapter_path(ref.adapter)}/aliases/{alias}",
            json={"ref": str(ref)},
            idempotent=True,
        )
        return AliasResult.model_validate(body)

    def remove_alias(self, name: str | AdapterName, alias: str) -> AliasResult:
        adapter = _as_name(name)
        check_alias(alias)
        return AliasResult.model_validate(
            self._json("DELETE", f"{self._adapter_path(adapter)}/aliases/{alias}")
        )

    def yank(self, ref: str | Ref, reason: str | None = None) -> VersionView:
        if reason is not None:
            limits.check_text(reason, "yank reason", limits.MAX_YANK_REASON_LENGTH)
        version = self.resolve(ref)
        path = f"{self._adapter_path(_as_name(version.adapter))}/versions/{version.number}/yank"
        return VersionView.model_validate(self._json("POST", path, json={"reason": reason}, idempotent=True))

    def unyank(self, ref: str | Ref) -> VersionView:
        version = self.resolve(ref)
        path = f"{self._adapter_path(_as_name(version.adapter))}/versions/{version.number}/yank"
        return VersionView.model_validate(self._json("DELETE", path, idempotent=True))

    # --------------------------------------------------------------------------------------- reads

    def resolve(self, ref: str | Ref) -> VersionView:
        parsed = _as_ref(ref)
        return VersionView.model_validate(self._json("GET", "/v1/resolve", params={"ref": str(parsed)}))

    def _stream_to(self, url: str, dest: Path, reporter: Reporter, label: str) -> str:
        """Download `url` to `dest` (see `_stream_once`) and return its sha256. After a 502/503/504 or
        a dropped connection it is tried again (downloads are idempotent), continuing from the bytes
        `dest` holds already. OSErrors of writing `dest` propagate."""
        tries = 0
        while True:
            tries += 1
            try:
                return self._stream_once(url, dest, reporter, label)
            except transfer.TryAgain as failed:
                if self._pause(True, tries, failed.response):
                    continue
                raise self._gave_up(failed.error, tries) from None

    def _stream_once(self, url: str, dest: Path, reporter: Reporter, label: str) -> str:
        return transfer.download(self.http, url, dest, reporter, label, self._error, self.url)

    def _fetch(self, url: str, dest: Path, reporter: Reporter, label: str) -> str:
        """Put the file at `url` at `dest` and return its sha256: from the download cache when it holds
        it (a HEAD says which digest), else downloaded into the cache's `.part` for that digest
        (continued if an earlier pull was cut) and then copied out."""
        if self.cache is None:
            return self._stream_to(url, dest, reporter, label)
        expected = self._request("HEAD", url).headers.get("x-content-sha256", "")
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            return self._stream_to(url, dest, reporter, label)
        if self.cache.copy_out(expected, dest):
            return expected
        part = self.cache.partial(expected)
        digest = self._stream_to(url, part, reporter, label)
        self.cache.add(part, digest)
        if not self.cache.copy_out(digest, dest):
            raise BlobCorrupted(f"{label}: the copy in the download cache {self.cache.root} changed")
        self.cache.shrink()  # after the copy: a file larger than the bound still reaches `dest`
        return digest

    def pull(
        self, ref: str | Ref, out_dir: str | Path, *, force: bool = False, reporter: Reporter | None = None
    ) -> PullResult:
        """Download a version's files (the reconstructed PEFT files and the others it stores) into
        `out_dir` (verified, then moved in)."""
        reporter = reporter or SilentReporter()
        parsed = _as_ref(ref)
        version = self.resolve(parsed)
        if version.status != "ready":
            reason = f": {version.error}" if version.error else ""
            raise VersionNotReady(f"{version.ref} is {version.status}{reason}")
        out = Path(out_dir)
        prepare_output(out, force)
        base = f"{self._adapter_path(_as_name(version.adapter))}/versions/{version.number}/files"
        digests = {}
        with staging_for(out, sweep_after=self.sweep_after) as staging:
            try:
                for filename in [*PULLED_FILES, *(f["name"] for f in version.files)]:
                    if filename not in PULLED_FILES:
                        folder_files.check_name(filename, version.ref)  # never a path outside `out`
                    url, dest = f"{base}/{filename}", staging / filename
                    digests[filename] = self._fetch(url, dest, reporter, filename)
            except OSError as exc:  # a full disk, a quota, a file size limit
                raise write_error(out, exc) from None
            files = install(staging, out)
        if self.cache is not None:
            self.cache.record(parsed, version, digests)
        return PullResult(version=version, path=str(out_dir), files=files)

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            query = {k: v for k, v in params.items() if v is not None} | {"limit": PAGE}
            if after is not None:
                query["after"] = after
            page = self._json("GET", path, params=query)
            yield from page[key]
            after = page.get("next")
            if after is None:
                return

    def list(
        self,
        *,
        namespace: str | None = None,
        task: str | None = None,
        base_model: str | None = None,
        tag: str | None = None,
        compat: CompatFilter | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[AdapterView]:
        for value in (namespace, task, tag):
            if value is not None and not NAME.fullmatch(value):
                return []  # breaks the naming rule: nothing can match (as in the embedded registry)
        if base_model is not None and limits.base_model_problem(base_model) is not None:
            return []  # no adapter can have it
        params: dict[str, Any] = {"namespace": namespace, "task": task, "base_model": base_model, "tag": tag}
        if labels:
            params["label"] = [f"{key}:{value}" for key, value in version_labels.check_labels(labels).items()]
        if compat is not None:
            params |= {
                "max_rank": compat.max_rank,
                "no_dora": compat.no_dora or None,
                "no_modules_to_save": compat.no_modules_to_save or None,
                "engine": compat.engine,
            }
        return [AdapterView.model_validate(a) for a in self._pages("/v1/adapters", "adapters", params)]

    def adapter(self, name: str | AdapterName) -> AdapterView:
        return AdapterView.model_validate(self._json("GET", self._adapter_path(_as_name(name))))

    def versions(self, name: str | AdapterName) -> list[VersionView]:
        path = f"{self._adapter_path(_as_name(name))}/versions"
        return [VersionView.model_validate(v) for v in self._pages(path, "versions", {})]

    def show(self, ref: str | Ref) -> ShowResult:
        """An adapter, the version `ref` names (for a bare name: the latest, if any) and all versions."""
        parsed = _as_ref(ref)
        adapter = AdapterView.model_validate(self._json("GET", self._adapter_path(parsed.adapter)))
        versions = self.versions(parsed.adapter)
        version = None if parsed.is_latest and adapter.latest is None else self.resolve(parsed)
        return ShowResult(adapter=adapter, version=version, versions=versions)

    # -------------------------------------------------------------------------------------- tokens

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
