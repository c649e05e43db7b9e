"""Engine layouts: a folder of plain PEFT adapters, `DIR/<namespace>/<name>/`, kept in step with a
filtered set of the registry's adapters (what vLLM's filesystem resolver, NIM's `NIM_PEFT_SOURCE`,
LoRAX's `local` source and SGLang's paths read).

Each adapter folder holds `adapter_config.json`, `adapter_model.safetensors` and a marker,
`.adapters-sync.json`, naming the version and the digest of its artifact: a folder whose marker names
the same artifact (and the same served base model) is left alone, and only folders with a marker are
ever replaced or pruned. Each adapter is written into a temporary folder beside its place and renamed
in; one sync at a time holds a lock on the folder. Works against any registry (embedded or remote):
it uses only `list`, `resolve` and `pull`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engines import EngineOptions, engine, problems
from .errors import OutputError
from .progress import Reporter, SilentReporter
from .storage import sha256_file

if TYPE_CHECKING:
    from .client_protocol import Registry
    from .schemas import VersionView

MARKER = ".adapters-sync.json"
LOCK = ".adapters-sync.lock"
CONFIG_FILE = "adapter_config.json"
# Temporary folders of a sync sit beside their adapter's folder: ".<name>.sync-*" / ".<name>.old-*".
TEMP_MARKS = (".sync-", ".old-")


@dataclass
class SyncReport:
    directory: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    # Adapters in the filter that were not synced: {"adapter", "reason"} (engine refusals, conflicts).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # folders there that sync did not write

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "written": self.written,
            "unchanged": self.unchanged,
            "pruned": self.pruned,
            "skipped": self.skipped,
            "conflicts": self.conflicts,
        }


@dataclass(frozen=True)
class SyncRequest:
    directory: Path
    namespace: str | None = None
    task: str | None = None
    base_model: str | None = None
    tag: str | None = None
    alias: str | None = None
    served_base_model: str | None = None
    prune: bool = False
    engine: str | None = None
    engine_options: EngineOptions = field(default_factory=EngineOptions)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder sync wrote, or None (no marker, or one that does not parse)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _up_to_date(folder: Path, version: VersionView, served: str | None) -> bool:
    marker = read_marker(folder)
    if marker is None or marker.get("artifact_digest") != version.artifact_digest:
        return False
    # Versions that share an artifact can differ in their other files (README, tokenizer).
    if marker.get("content_digest", version.source_digest) != version.content_digest:
        return False
    if marker.get("served_base_model") != served:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    # The files are still there, whole (a size check: hashing every adapter on every sync costs a read
    # of the whole tree).
    for name, entry in files.items():
        try:
            if not isinstance(entry, dict) or (folder / name).stat().st_size != entry.get("size"):
                return False
        except OSError:
            return False
    return True


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = (directory / LOCK).open("a")
    except OSError as exc:
        raise OutputError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another sync is writing {directory}; try again when it is done") from None
        yield


def _sweep_temporaries(directory: Path) -> None:
    """Temporary folders of killed syncs (we hold the lock, so no other sync is running)."""
    for namespace in directory.iterdir():
        if not namespace.is_dir() or namespace.name.startswith("."):
            continue
        for child in namespace.iterdir():
            if child.name.startswith(".") and any(m in child.name for m in TEMP_MARKS) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def rewrite_base_model(config_path: Path, served: str) -> None:
    """Set `base_model_name_or_path` (vLLM's filesystem resolver loads an adapter only when it equals
    the served model's name), keeping every other field as it was."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = served
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write(registry: Registry, version: VersionView, target: Path, served: str | None) -> None:
    """Pull `version` into a temporary folder beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.sync-", dir=target.parent))
    old: Path | None = None
    try:
        files_dir = staging / "files"
        registry.pull(version.ref, files_dir)
        if served is not None:
            rewrite_base_model(files_dir / CONFIG_FILE, served)
        files = {}
        for path in sorted(files_dir.iterdir()):
            digest, size = sha256_file(path)
            files[path.name] = {"sha256": digest, "size": size}
        marker = {
            "ref": version.ref,
            "adapter": version.adapter,
            "version": version.number,
            "artifact_digest": version.artifact_digest,
            "source_digest": version.source_digest,
            "content_digest": version.content_digest,
            "served_base_model": served,
            "files": files,
        }
        (files_dir / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(old / "previous")
        files_dir.rename(target)
    except OSError as exc:
        if old is not None and not target.exists():
            (old / "previous").rename(target)  # put the previous version back
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}; it was left as it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _wanted(registry: Registry, request: SyncRequest, report: SyncReport) -> dict[str, VersionView]:
    """The versions the filter selects, by adapter name."""
    found = registry.list(
        namespace=request.namespace, task=request.task, base_model=request.base_model, tag=request.tag
    )
    wanted: dict[str, VersionView] = {}
    for adapter in found:
        number = adapter.aliases.get(request.alias) if request.alias is not None else adapter.latest
        if number is None:
            continue  # no ready version (or no such alias): not in the set
        version = registry.resolve(f"{adapter.name}:{number}")
        if version.status != "ready":
            continue
        if request.engine is not None:
            reasons = problems(version.compat, request.engine, request.engine_options)
            if reasons:
                report.skipped.append({"adapter": version.ref, "reason": "; ".join(reasons)})
                continue
        wanted[adapter.name] = version
    return wanted


def sync(registry: Registry, request: SyncRequest, *, reporter: Reporter | None = None) -> SyncReport:
    """Make `request.directory` hold exactly the selected versions (with `prune`, also remove the
    folders of adapters that left the selection)."""
    if request.engine is not None:
        engine(request.engine, request.engine_options)  # refuse bad options before anything is read
    reporter = reporter or SilentReporter()
    directory = Path(request.directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory} exists and is not a directory")
    report = SyncReport(str(directory))
    with _locked(directory):
        _sweep_temporaries(directory)
        wanted = _wanted(registry, request, report)
        with reporter.task("syncing", total=len(wanted), unit="adapters") as advance:
            for name, version in sorted(wanted.items()):
                target = directory / name
                if target.exists() and read_marker(target) is None:
                    report.conflicts.append(str(target))
                    report.skipped.append(
                        {"adapter": version.ref, "reason": f"{target} exists and was not written by sync"}
                    )
                elif _up_to_date(target, version, request.served_base_model):
                    report.unchanged.append(version.ref)
                else:
                    _write(registry, version, target, request.served_base_model)
                    report.written.append(version.ref)
                advance(1)
        if request.prune:
            report.pruned = _prune(directory, set(wanted))
    return report


def _prune(directory: Path, keep: set[str]) -> list[str]:
    """Remove the folders sync wrote (those with a marker) for adapters not in `keep`."""
    pruned = []
    for namespace in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder in sorted(p for p in namespace.iterdir() if p.is_dir() and not p.name.startswith(".")):
            name = f"{namespace.name}/{folder.name}"
            if name in keep or read_marker(folder) is None:
                continue
            shutil.rmtree(folder)
            pruned.append(name)
        if not any(namespace.iterdir()):
            namespace.rmdir()
    return pruned
