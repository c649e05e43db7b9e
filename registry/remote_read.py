"""The read operations of `RemoteRegistry` (a mixin on its HTTP session): resolve, pull (verified,
resumed after a cut, through the download cache), list, show. The local counterpart is
read_client.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import folder_files, limits, transfer
from . import labels as version_labels
from .engines import CompatFilter
from .errors import BlobCorrupted, VersionNotReady
from .output import install, prepare_output, staging_for, write_error
from .progress import Reporter, SilentReporter
from .refs import NAME_PATTERN, AdapterName, Ref
from .remote_session import RemoteSession, as_name, as_ref
from .schemas import AdapterView, PullResult, ShowResult, VersionView

PULLED_FILES = ("adapter_config.json", "adapter_model.safetensors")
PAGE = 500
NAME = re.compile(NAME_PATTERN)


class RemoteReadMethods(RemoteSession):
    def resolve(self, ref: str | Ref) -> VersionView:
        parsed = as_ref(ref)
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
        parsed = as_ref(ref)
        version = self.resolve(parsed)
        if version.status != "ready":
            reason = f": {version.error}" if version.error else ""
            raise VersionNotReady(f"{version.ref} is {version.status}{reason}")
        out = Path(out_dir)
        prepare_output(out, force)
        base = f"{self._adapter_path(as_name(version.adapter))}/versions/{version.number}/files"
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
        return AdapterView.model_validate(self._json("GET", self._adapter_path(as_name(name))))

    def versions(self, name: str | AdapterName) -> list[VersionView]:
        path = f"{self._adapter_path(as_name(name))}/versions"
        return [VersionView.model_validate(v) for v in self._pages(path, "versions", {})]

    def show(self, ref: str | Ref) -> ShowResult:
        """An adapter, the version `ref` names (for a bare name: the latest, if any) and all versions."""
        parsed = as_ref(ref)
        adapter = AdapterView.model_validate(self._json("GET", self._adapter_path(parsed.adapter)))
        versions = self.versions(parsed.adapter)
        version = None if parsed.is_latest and adapter.latest is None else self.resolve(parsed)
        return ShowResult(adapter=adapter, version=version, versions=versions)
