"""Processing: run a version's requested codec and record the outcome on it.

pending -> compressing -> ready (artifact stored and recorded), rejected (missed the fidelity gate and
the push said `reject`) or failed (any error, with its text). A run holds a lease on its version
(queue.py), renewed while the codec runs, and records its outcome only while it still holds it. The
numerics (`adapters.compress`, which loads torch) are imported only when a codec runs.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from . import events, queue
from .codecs import CodecEnvironment, attach_base_model
from .db import Database, utcnow
from .models import VersionStatus
from .progress import Reporter, SilentReporter
from .push import SOURCE_FILE
from .queue import Job
from .service import point_alias
from .storage import BlobStorage, sha256_file
from .sweep import temp_prefix
from .version_repository import BlobRepository, VersionRepository

ARTIFACT_FILE = "artifact.bin"


def _gate_passed(fidelity: dict[str, Any]) -> bool:
    """A codec that checks a fidelity gate reports `gate_passed` (and may describe the gate under
    `gate`); without one there is no gate."""
    return fidelity.get("gate_passed", True) is not False


def _json_safe(value: Any) -> Any:
    """JSON columns take no NaN or Infinity: such floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class Outcome:
    """What a codec run produced, to be recorded on the version in one transaction."""

    codec: str
    codec_params: dict[str, Any]
    fidelity: dict[str, Any]
    artifact: tuple[str, int] | None = None  # (sha256, size) of the stored artifact
    rejection: str | None = None  # why the version is rejected instead


def process_version(
    db: Database,
    storage: BlobStorage,
    version_id: int,
    *,
    reporter: Reporter | None = None,
    device: str | None = None,
    environment: CodecEnvironment | None = None,
    lease_seconds: float = 60,
    tmp_dir: Path | None = None,
) -> int:
    """Run the requested codec on a `pending` version now, in this process, and record the outcome.

    pending -> compressing -> ready (artifact stored and recorded), rejected (missed the fidelity gate
    and the push said `reject`) or failed (any error, with its text; inline runs are not retried).
    If the gate is missed and the push said `raw`, the version is ready with the lossless source as
    its artifact. The run holds a lease like a worker's, so if this process dies, a worker can take
    the version over once the lease expires. Returns the id.
    """
    job = queue.claim_version(db, version_id, queue.worker_id("inline"), lease_seconds=lease_seconds)
    run_job(
        db,
        storage,
        job,
        reporter=reporter,
        device=device,
        environment=environment,
        lease_seconds=lease_seconds,
        tmp_dir=tmp_dir,
    )
    return version_id


def run_job(
    db: Database,
    storage: BlobStorage,
    job: Job,
    *,
    reporter: Reporter | None = None,
    device: str | None = None,
    environment: CodecEnvironment | None = None,
    lease_seconds: float = 60,
    max_attempts: int = 1,
    backoff_seconds: float = 0,
    tmp_dir: Path | None = None,
) -> str:
    """Run a claimed job's codec while renewing its lease, and record what happened. Returns "ready",
    "rejected", "retry" (failed, queued again), "failed" or "lost" (the lease passed to another run,
    so nothing was recorded). `queue.Interrupted` gives the job back untouched and propagates."""
    try:
        with queue.Lease(db, job, lease_seconds=lease_seconds):
            outcome = run_codec(
                storage,
                job.source,
                job.requested,
                reporter=reporter or SilentReporter(),
                device=device,
                base_model=job.base_model,
                environment=environment,
                tmp_dir=tmp_dir,
                placement=placement_note(job, device),
            )
        with db.transaction() as session:
            return _record_outcome(session, job, outcome)
    except queue.Interrupted:
        queue.release(db, job)
        raise
    except BaseException as exc:
        result = queue.fail(db, job, exc, max_attempts=max_attempts, backoff_seconds=backoff_seconds)
        if not isinstance(exc, Exception):
            raise
        return result


def placement_note(job: Job, device: str | None) -> dict[str, Any]:
    """Where a job runs, for its record: the worker and its device, and, for a job that wants a base
    model this worker does not hold, why it runs here anyway."""
    note: dict[str, Any] = {"worker": job.worker}
    if device is not None:
        note["device"] = device
    if job.without_model is not None:
        note["without_model"] = job.without_model
    return note


def _make_codec(name: str, params: dict[str, Any], device: str | None) -> Any:
    """The codec, told to run on `device` when it takes a device (raw and simple codecs do not)."""
    from adapters.compress.codec import make_codec

    if device is not None and "device" not in params:
        try:
            return make_codec(name, **params, device=device)
        except (TypeError, ValueError):
            pass
    return make_codec(name, **params)


def run_codec(
    storage: BlobStorage,
    source: tuple[str, int],
    requested: dict[str, Any],
    *,
    reporter: Reporter,
    device: str | None = None,
    base_model: str | None = None,
    environment: CodecEnvironment | None = None,
    tmp_dir: Path | None = None,
    placement: dict[str, Any] | None = None,
) -> Outcome:
    """Fetch the source blob (verified), run the requested codec (on `device` if the codec takes
    one, with the base model where this machine has it), store the artifact if it is a new blob,
    and apply the fidelity gate. `placement` (placement_note) is recorded with the setup. Touches no
    database."""
    from adapters.compress.codec import reconstruct

    source_digest = source[0]
    with tempfile.TemporaryDirectory(prefix=temp_prefix("process"), dir=tmp_dir) as tmp:
        source_file, artifact = Path(tmp) / SOURCE_FILE, Path(tmp) / ARTIFACT_FILE
        storage.get_file(source_digest, source_file)
        checkpoint = reconstruct(source_file)
        codec = _make_codec(requested["codec"], requested.get("params", {}), device)
        base_model = base_model or checkpoint.config.get("base_model_name_or_path")
        setup = attach_base_model(codec, base_model, environment)
        placement = dict(placement or {})
        if setup.get("base_model_found") is not False:
            placement.pop("without_model", None)  # it was found here after all: nothing to explain
        setup |= placement
        with reporter.task(f"compressing ({codec.name})", total=1000) as advance:
            done = [0]

            def progress(n: int, total: int) -> None:
                now = round(1000 * n / max(total, 1))
                advance(now - done[0])
                done[0] = now

            report = codec.compress(checkpoint, artifact, progress=progress, source_bytes=source[1])
        fidelity = _json_safe(
            {
                **report.fidelity,
                **({"setup": setup} if setup else {}),
                "source_bytes": source[1],
                "artifact_bytes": report.artifact_bytes,
                "ratio": round(source[1] / report.artifact_bytes, 3),
            }
        )
        if _gate_passed(report.fidelity):
            digest, size = sha256_file(artifact)
            if digest != source_digest:
                storage.put_file(digest, artifact)
            return Outcome(report.codec, _json_safe(report.params), fidelity, artifact=(digest, size))
        gate = report.fidelity.get("gate") or {}
        reason = gate.get("reason") if isinstance(gate, dict) else None
        if requested.get("on_gate_fail") == "reject":
            return Outcome(
                report.codec,
                _json_safe(report.params),
                fidelity,
                rejection=f"missed the fidelity gate ({reason or 'no reason given'})",
            )
        # Keep the lossless source: what is stored is described at the top, the attempt beneath.
        kept = {
            "lossless": True,
            "source_bytes": source[1],
            "artifact_bytes": source[1],
            "ratio": 1.0,
            "fallback": "raw",
            "gate_passed": False,
            "gate": fidelity.get("gate"),
            "attempt": {"codec": report.codec, **{k: v for k, v in fidelity.items() if k != "setup"}},
            **({"setup": setup} if setup else {}),
        }
        return Outcome("raw", {}, _json_safe(kept), artifact=source)


def _record_outcome(session: Session, job: Job, outcome: Outcome) -> str:
    """Write a run's outcome on its version, if the run still holds the lease; returns the status
    written, or "lost"."""
    version = VersionRepository(session).get(job.version_id, for_update=True)
    if (
        version is None
        or version.status != VersionStatus.COMPRESSING.value
        or version.leased_by != job.worker
    ):
        return "lost"  # the lease expired and another run took the job over
    if outcome.artifact is None:
        version.status = VersionStatus.REJECTED.value
        version.error = outcome.rejection
    else:
        digest, size = outcome.artifact
        BlobRepository(session).ensure(digest, size)
        version.status = VersionStatus.READY.value
        version.artifact_digest, version.artifact_size = digest, size
        version.error = None  # an earlier attempt's
    version.codec = outcome.codec
    version.codec_params = outcome.codec_params
    version.fidelity = outcome.fidelity
    version.processed_at = utcnow()
    version.leased_by = version.lease_expires_at = version.next_attempt_at = None
    session.flush()
    events.version_status(session, version)
    if version.status == VersionStatus.READY.value:
        for alias in version.requested.get("aliases", []):
            point_alias(session, version, alias, by=version.created_by)
    return version.status
