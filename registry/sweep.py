"""Leftovers of processes that died mid-work, and sweeping them.

A push, a codec run, a reconstruction without a cache and an API upload each work in a temporary
folder under one known place (ADAPTERS_TMP_DIR, default $ADAPTERS_HOME/tmp) named
`adapters-<kind>-<pid>-<random>`; a killed process leaves its folder behind. Other leftovers live
beside what they were meant to become: `.part` files in a local blob folder, `.staging-*` and
`.trash-*` folders in the reconstruction cache, `.<name>.<random>` folders beside a pull's output,
and incomplete multipart uploads in S3.

A leftover is stale when nothing in it changed for `older_than` seconds and the process its name
records (if any) is not running on this machine. Only names this project makes are touched: a
temporary folder set to the system's /tmp loses nothing but `adapters-*` entries.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "adapters-"
# adapters-<kind>-<pid>-<random from mkdtemp>
TEMP_NAME = re.compile(rf"{PREFIX}[a-z]+-(?P<pid>[0-9]+)-[A-Za-z0-9_]+")
CACHE_LEFTOVER = re.compile(r"\.(staging|trash)-[A-Za-z0-9_]+")


def temp_prefix(kind: str) -> str:
    """The name prefix of this process's temporary folders of a kind (push, process, upload, ...)."""
    return f"{PREFIX}{kind}-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as ended)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # Linux: a killed child its parent has not reaped yet is a zombie, not a worker
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class SweepReport:
    """What a sweep removed (paths, or S3 uploads as s3://bucket/key#upload-id) and what it could not."""

    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def extend(self, other: SweepReport) -> None:
        self.removed.extend(other.removed)
        self.errors.extend(other.errors)

    def to_json(self) -> dict[str, list[str]]:
        return {"removed": list(self.removed), "errors": list(self.errors)}


def log_sweep(logger: logging.Logger, report: SweepReport) -> None:
    """One log line per sweep that found something."""
    if report.removed:
        logger.info("swept %d leftovers", len(report.removed), extra={"removed": report.removed})
    for error in report.errors:
        logger.warning("could not sweep %s", error)


def last_change(path: Path) -> float:
    """The newest mtime of `path` and, for a folder, of what it holds (one level: the temporary
    folders hold files)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    return newest


def _remove(path: Path, report: SweepReport) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return  # another sweeper was quicker
    except OSError as exc:
        report.errors.append(f"{path}: {exc.strerror or exc}")
        return
    report.removed.append(str(path))


def sweep_folder(
    folder: Path, pattern: re.Pattern[str], older_than: float, *, now: float | None = None
) -> SweepReport:
    """Remove the entries of `folder` whose names match `pattern` and that are stale (see the module
    docstring); a `pid` group in the pattern names the owning process."""
    report = SweepReport()
    cutoff = (time.time() if now is None else now) - older_than
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return report
    except OSError as exc:
        report.errors.append(f"{folder}: {exc.strerror or exc}")
        return report
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and (int(pid) == os.getpid() or process_alive(int(pid))):
            continue  # its process still runs: in use, however old
        try:
            if last_change(path) > cutoff:
                continue
        except OSError:
            continue
        _remove(path, report)
    return report


def sweep_temp(tmp_dir: Path, older_than: float, *, now: float | None = None) -> SweepReport:
    """Stale temporary folders of pushes, codec runs, reconstructions and uploads."""
    return sweep_folder(tmp_dir, TEMP_NAME, older_than, now=now)


def sweep_cache(cache_root: Path, older_than: float, *, now: float | None = None) -> SweepReport:
    """Stale staging and trash folders of the reconstruction cache."""
    return sweep_folder(cache_root, CACHE_LEFTOVER, older_than, now=now)


def sweep_beside(out_dir: Path, older_than: float, *, now: float | None = None) -> SweepReport:
    """Stale staging folders of earlier pulls into `out_dir` (`.<name>.<random>`, see output.py)."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.[A-Za-z0-9_]{{8}}")
    return sweep_folder(out_dir.parent, pattern, older_than, now=now)
