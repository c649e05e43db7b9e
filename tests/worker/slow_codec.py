"""A codec for the worker tests, loaded by worker processes through the test hook
ADAPTERS_EXTRA_CODECS=tests.worker.slow_codec.

Each run appends "<pid> <content digest>" to the `log` file it is given, then can wait until a
`release` file exists (so a test can stop or kill a worker while it is provably mid-job, without
guessing at timings), sleep a little (`seconds`, to make jobs overlap in a race), or `fail` with a
RuntimeError (an error of the machinery, which workers retry). The artifact is the tensors as they
are, under this codec's format name. `killed_push` kills an embedded `adapters push` mid-run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from adapters.compress import stfile
from adapters.compress.codec import CompressionReport, canonical_bytes, config_metadata, register_codec

WAIT_LIMIT = 120
ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = str(Path(sys.executable).parent / "adapters")


@register_codec
class SlowCodec:
    name: ClassVar[str] = "test-slow"
    format_version: ClassVar[int] = 1

    def __init__(
        self, log: str = "", release: str | None = None, seconds: float = 0.0, fail: str | None = None
    ):
        self.log, self.release, self.seconds, self.fail = log, release, seconds, fail

    @classmethod
    def from_params(cls, log: str, release: str | None = None, seconds: float = 0.0, fail: str | None = None):
        return cls(log, release, seconds, fail)

    def compress(self, checkpoint, out_file, *, progress=None, source_bytes=None) -> CompressionReport:
        content = hashlib.sha256(canonical_bytes(checkpoint)).hexdigest()[:16]
        with Path(self.log).open("a") as fh:
            fh.write(f"{os.getpid()} {content}\n")
        deadline = time.monotonic() + WAIT_LIMIT
        while self.release and not Path(self.release).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.release} never appeared")
            time.sleep(0.05)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError(self.fail)
        size = stfile.write(out_file, checkpoint.tensors, config_metadata(self, checkpoint.config))
        return CompressionReport(
            codec=self.name,
            source_bytes=checkpoint.nbytes(),
            artifact_bytes=size,
            params={"seconds": self.seconds},
            fidelity={"lossless": True},
        )

    def decode(self, tensors, metadata, config):
        return tensors


def runs(log: Path) -> list[tuple[int, str]]:
    """(pid, content digest) of every run logged so far."""
    if not log.exists():
        return []
    return [(int(pid), digest) for pid, digest in (line.split() for line in log.read_text().splitlines())]


def killed_push(adapter_dir: Path, home: Path, tmp_path: Path) -> tuple[Path, int]:
    """`adapters push` on an embedded registry, SIGKILLed while its codec runs; returns the codec's
    log and the dead process's id."""
    log, release = tmp_path / "runs.log", tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERS_")}
    env |= {
        "ADAPTERS_HOME": str(home),
        "ADAPTERS_EXTRA_CODECS": "tests.worker.slow_codec",
        "ADAPTERS_DEVICE": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    args = ["push", str(adapter_dir), "--name", "acme/x", "--task", "t", "--codec", "test-slow"]
    args += ["--param", f"log={log}", "--param", f"release={release}"]
    proc = subprocess.Popen([ADAPTERS, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not runs(log):  # the codec is running: the version is `compressing`
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the codec never started"
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)
    release.touch()  # a run from now on finishes at once
    return log, proc.pid


@register_codec
class SlowBaseModelCodec(SlowCodec):
    """The same, as a codec that uses a base model (as NOLA does): versions pushed with it want their
    adapter's base model, so the queue hands them to workers that hold it. Its report says which
    model folder it was given, if any."""

    name: ClassVar[str] = "test-slow-base"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_model: Path | None = None
        self.texts: list[str] | None = None

    def compress(self, checkpoint, out_file, *, progress=None, source_bytes=None) -> CompressionReport:
        report = super().compress(checkpoint, out_file, progress=progress, source_bytes=source_bytes)
        report.fidelity["base_model_dir"] = str(self.base_model) if self.base_model else None
        return report
