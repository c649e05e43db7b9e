"""Resolving a registry ref to a local PEFT folder for a serving engine (the vLLM plugin's logic,
without vLLM: `vllm_plugin.py` wraps it in vLLM's interface).

`resolve(base_model_name, lora_name)` reads `lora_name` as a ref (`ns/name`, `ns/name:3`,
`ns/name@prod`, `ns/name@sha256:...`), checks that the version's base model is the served one, and
returns a folder holding its files, from a local cache keyed by the artifact's sha256:

- **verified**: the files are pulled (each checked against the sha256 the registry sends), their
  sha256 recorded beside them, and checked again whenever the cache hands them out; a folder that no
  longer matches is fetched again;
- **bounded**: least recently used folders are removed once the cache holds more than `max_bytes`
  (never the one just handed out);
- **stable ids**: the int id of a version is derived from its artifact's sha256, so the same content
  has the same id under every name and in every process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidRef, RegistryError
from .refs import Ref
from .storage import sha256_file

if TYPE_CHECKING:
    from .client_protocol import Registry
    from .schemas import VersionView

log = logging.getLogger("adapters.resolver")
MANIFEST = ".manifest.json"
# Ids are the first 60 bits of the sha256: positive, within int64, and unique in practice.
ID_HEX_DIGITS = 15


def lora_int_id(digest: str) -> int:
    """The stable, positive int id of an artifact (what vLLM's LoRARequest wants)."""
    return int(digest[:ID_HEX_DIGITS], 16) or 1


@dataclass(frozen=True)
class Resolved:
    lora_name: str
    ref: str  # the version, ns/name:N
    path: Path
    digest: str  # the artifact's sha256
    lora_int_id: int


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class LoraCache:
    """Folders of PEFT files keyed by artifact sha256, checked on every hit, least recently used
    removed past `max_bytes`. Safe across threads and processes sharing the folder (file locks)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock, (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _verified(self, folder: Path) -> bool:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            return bool(manifest) and all(
                sha256_file(folder / name)[0] == digest for name, digest in manifest.items()
            )
        except (OSError, ValueError, AttributeError):
            return False

    def get(self, registry: Registry, version: VersionView) -> Path:
        """The folder of `version`'s files: from the cache when it holds them intact, else pulled."""
        assert version.artifact_digest is not None
        folder = self.root / version.artifact_digest
        with self._locked():
            if folder.is_dir() and self._verified(folder):
                os.utime(folder)  # most recently used
                return folder
            if folder.exists():
                log.warning("cached files of %s do not match their sha256: fetching them again", version.ref)
                shutil.rmtree(folder)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
            try:
                files = staging / "files"
                registry.pull(version.ref, files)
                manifest = {p.name: sha256_file(p)[0] for p in sorted(files.iterdir())}
                (files / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
                files.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._evict(keep=folder)
            return folder

    def _evict(self, keep: Path) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        total = sum(_folder_size(p) for p in entries)
        for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            total -= _folder_size(entry)
            shutil.rmtree(entry, ignore_errors=True)

    def entries(self) -> list[str]:
        """The digests held, least recently used first."""
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(folders, key=lambda p: p.stat().st_mtime)]


class LoraResolver:
    """Refs to cached PEFT folders for an engine serving `base model`s.

    `served_base_model`: the registry's name of the model the engine serves, for an engine that serves
    it under a name of its own (a local path, say); None: the name the engine passes is compared."""

    def __init__(self, registry: Registry, cache: LoraCache, *, served_base_model: str | None = None) -> None:
        self.registry = registry
        self.cache = cache
        self.served_base_model = served_base_model

    def _base_models(self, version: VersionView) -> set[str]:
        """The names the version's base model goes by: the adapter's and its config's."""
        names = {str(version.peft_config.get("base_model_name_or_path") or "")}
        if version.wants_base_model:
            names.add(version.wants_base_model)
        with suppress(RegistryError):
            names.add(self.registry.adapter(version.adapter).base_model or "")
        return {n for n in names if n}

    def resolve(self, base_model_name: str, lora_name: str) -> Resolved | None:
        """The cached folder for `lora_name` if it is a ready version of an adapter for
        `base_model_name`; None when it is not a ref, not found, not ready, or for another model (so
        the engine can ask its other resolvers)."""
        try:
            ref = Ref.parse(lora_name)
        except InvalidRef:
            return None
        started = time.perf_counter()
        try:
            version = self.registry.resolve(ref)
        except RegistryError as exc:
            log.info("cannot resolve %s: %s", lora_name, exc)
            return None
        if version.status != "ready" or version.artifact_digest is None:
            log.info("%s is %s: not served", version.ref, version.status)
            return None
        served = self.served_base_model or base_model_name
        models = self._base_models(version)
        # An adapter that records no base model cannot be checked: it is served (and logged).
        if not models:
            log.info("%s records no base model: serving it for %s unchecked", version.ref, base_model_name)
        elif served not in models:
            log.warning(
                "%s is an adapter of %s, not of the served %s: not served",
                version.ref,
                " / ".join(sorted(models)),
                base_model_name,
            )
            return None
        folder = self.cache.get(self.registry, version)
        log.info("resolved %s to %s in %.2f s", lora_name, version.ref, time.perf_counter() - started)
        return Resolved(
            lora_name=lora_name,
            ref=version.ref,
            path=folder,
            digest=version.artifact_digest,
            lora_int_id=lora_int_id(version.artifact_digest),
        )
