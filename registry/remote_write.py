"""The write operations of `RemoteRegistry` (a mixin on its HTTP session): push (streamed, with each
file's sha256, after the checks that need no server), wait, aliases, yank. The local counterpart is
write_client.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import folder_files, limits
from . import labels as version_labels
from .errors import InvalidAdapterUpload
from .progress import Advance, Reporter, SilentReporter
from .refs import AdapterName, Ref, check_alias, check_name
from .remote_session import RemoteSession, as_name, as_ref
from .schemas import AliasResult, PushResult, VersionView
from .storage import sha256_file

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


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


class RemoteWriteMethods(RemoteSession):
    if TYPE_CHECKING:

        def resolve(self, ref: str | Ref) -> VersionView: ...  # remote_read.py

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
        adapter = as_name(name)
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
        ref = as_ref(target)
        check_alias(alias)
        body = self._json(
            "PUT",
            f"{self._adapter_path(ref.adapter)}/aliases/{alias}",
            json={"ref": str(ref)},
            idempotent=True,
        )
        return AliasResult.model_validate(body)

    def remove_alias(self, name: str | AdapterName, alias: str) -> AliasResult:
        adapter = as_name(name)
        check_alias(alias)
        return AliasResult.model_validate(
            self._json("DELETE", f"{self._adapter_path(adapter)}/aliases/{alias}")
        )

    def yank(self, ref: str | Ref, reason: str | None = None) -> VersionView:
        if reason is not None:
            limits.check_text(reason, "yank reason", limits.MAX_YANK_REASON_LENGTH)
        version = self.resolve(ref)
        path = f"{self._adapter_path(as_name(version.adapter))}/versions/{version.number}/yank"
        return VersionView.model_validate(self._json("POST", path, json={"reason": reason}, idempotent=True))

    def unyank(self, ref: str | Ref) -> VersionView:
        version = self.resolve(ref)
        path = f"{self._adapter_path(as_name(version.adapter))}/versions/{version.number}/yank"
        return VersionView.model_validate(self._json("DELETE", path, idempotent=True))
