"""The registry's operations: push, process, resolve, pull, list, aliases, yank.

Single-transaction operations take the caller's `Session` and never commit. The operations that move
blobs (push, process_version, pull) take the `Database` and run their own short transactions around
the storage work, in the order the contracts need: a blob is stored before any row points to it, a
version becomes `ready` only with its artifact recorded, and any failure while processing leaves the
version `failed` with the reason, never half-written.

The numerics (`adapters.compress`, which loads torch) are imported only by the operations that need
them, so listing and resolving stay light.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from . import alias_audit, folder_files, gc, labels, limits, queue
from .cache import CachedAdapter, ReconstructionCache, open_folder
from .codecs import CodecEnvironment, attach_base_model, uses_base_model
from .compat import facts_of
from .db import Database, utcnow
from .engines import CompatFilter
from .errors import (
    AdapterConflict,
    AdapterNotFound,
    AdapterTooLarge,
    AliasNotFound,
    InvalidAdapterUpload,
    InvalidCodec,
    InvalidRequest,
    StorageError,
    UnsupportedArtifact,
    VersionNotFound,
    VersionNotReady,
)
from .models import Adapter, Alias, Version, VersionFile, VersionStatus
from .output import install, prepare_output, staging_for, write_error
from .progress import Reporter, SilentReporter
from .queue import Job
from .refs import AdapterName, Ref, check_alias, check_name
from .repository import AdapterRepository, AliasRepository, BlobRepository, VersionRepository
from .storage import BlobStorage, sha256_file
from .sweep import temp_prefix

GateFallback = Literal["raw", "reject"]
# Pushes compress by default: the size is searched for the smallest artifact that passes the
# fidelity gate, and the lossless source is kept when nothing does.
DEFAULT_CODEC = "nola"
SOURCE_FILE = "source.safetensors"
ARTIFACT_FILE = "artifact.bin"


@dataclass(frozen=True)
class PushRequest:
    """A push: the PEFT directory, where it goes, and how it should be stored."""

    path: Path
    name: AdapterName
    task: str | None = None
    base_model: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    codec: str = DEFAULT_CODEC
    params: dict[str, Any] = field(default_factory=dict)
    on_gate_fail: GateFallback = "raw"
    created_by: str | None = None
    # How messages name the directory (the API validates uploads in a temporary folder and names
    # them as the client's own path).
    label: str | None = None
    # Lineage (labels.py): key/value labels for the version, and the base model's revision (else the
    # adapter config's `revision`).
    labels: dict[str, str] = field(default_factory=dict)
    base_model_revision: str | None = None

    def __post_init__(self) -> None:
        if self.task is not None:
            check_name(self.task, "task")
        limits.check_count(self.tags, "tags", limits.MAX_TAGS)
        for tag in self.tags:
            check_name(tag, "tag")
        limits.check_count(self.aliases, "aliases", limits.MAX_ALIASES)
        for alias in self.aliases:
            check_alias(alias)
        if self.base_model is not None:
            limits.check_base_model(self.base_model)
        if self.description is not None:
            limits.check_text(self.description, "description", limits.MAX_DESCRIPTION_LENGTH)
        if len(self.codec) > limits.MAX_CODEC_NAME_LENGTH:
            raise InvalidCodec(
                f"codec name {self.codec[:40]!r}... is longer than {limits.MAX_CODEC_NAME_LENGTH} characters"
            )
        if self.on_gate_fail not in ("raw", "reject"):
            raise InvalidCodec(f"on_gate_fail must be 'raw' or 'reject', got {self.on_gate_fail!r}")
        labels.check_labels(self.labels)
        labels.check_revision(self.base_model_revision)

    @property
    def requested(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "params": dict(self.params),
            "on_gate_fail": self.on_gate_fail,
            "aliases": sorted(set(self.aliases)),
        }


@dataclass(frozen=True)
class Pushed:
    version_id: int
    created: bool


def as_ref(ref: str | Ref) -> Ref:
    return ref if isinstance(ref, Ref) else Ref.parse(ref)


# ---------------------------------------------------------------------------------------------- push


def check_codec(name: str, params: dict[str, Any]) -> Any:
    """The codec, built to check that it exists and accepts these parameters (else InvalidCodec)."""
    from adapters.compress.codec import make_codec

    try:
        return make_codec(name, **params)
    except (ImportError, ValueError, TypeError) as exc:
        raise InvalidCodec(f"codec {name!r} with parameters {params}: {exc}") from None


def push(
    db: Database,
    storage: BlobStorage,
    request: PushRequest,
    *,
    max_bytes: int | None = None,
    reporter: Reporter | None = None,
    tmp_dir: Path | None = None,
    enqueue: Callable[[Session, Version], object] | None = None,
) -> Pushed:
    """Validate a PEFT directory, store its canonical bytes, and create the next version (`pending`);
    `enqueue` (jobs.defer_in) queues its compression in the transaction that creates it.

    Pushing content the adapter already holds (in a version that has not failed) returns that version
    with `created=False`. Nothing is written for input that fails validation.
    """
    from adapters.compress.codec import canonical_bytes
    from adapters.compress.errors import CompressError
    from adapters.compress.peft_io import CONFIG_FILE, read_adapter

    reporter = reporter or SilentReporter()
    wants_model = uses_base_model(check_codec(request.codec, request.params))
    where = request.label or str(request.path)
    with reporter.task("validating"):
        try:
            checkpoint = read_adapter(request.path)
            data = canonical_bytes(checkpoint)
        except CompressError as exc:
            message = str(exc)
            if request.label is not None:
                message = message.replace(str(request.path), request.label)
            raise InvalidAdapterUpload(message) from None
        extras = folder_files.collect(request.path, where)  # README, tokenizer, ...: stored as they are
    total = len(data) + sum(f.size for f in extras)
    if max_bytes is not None and total > max_bytes:
        raise AdapterTooLarge(f"{where}: adapter is {total} bytes, more than the limit of {max_bytes}")
    digest = hashlib.sha256(data).hexdigest()
    content = folder_files.content_digest(digest, extras)
    # An explicit base model must agree with the adapter's; the config's only fills in a missing one.
    # Both are checked here, before any blob is stored.
    config_base_model = checkpoint.config.get("base_model_name_or_path") or None
    if config_base_model is not None and not config_base_model.strip():
        config_base_model = None  # blank: as if absent
    if config_base_model is not None:
        problem = limits.base_model_problem(config_base_model)
        if problem is not None:
            raise InvalidAdapterUpload(f"{where}/{CONFIG_FILE}: base_model_name_or_path {problem}")
    try:
        revision = labels.revision_of(checkpoint.config, request.base_model_revision)
    except InvalidRequest as exc:
        raise InvalidAdapterUpload(f"{where}/{CONFIG_FILE}: {exc}") from None

    # Before uploading: refuse what can be refused now, and return known content as it is.
    # (The checks run again under the adapter's lock below, for pushes that race.)
    with db.transaction() as session:
        adapter = AdapterRepository(session).get(request.name)
        if adapter is None and request.task is None:
            raise InvalidRequest(f"{request.name} is a new adapter: give its task (--task)")
        if adapter is not None:
            _check_same_adapter(adapter, request.task, request.base_model)
            existing = VersionRepository(session).live_by_content(adapter, content)
            if existing is not None:
                _apply_push_aliases(session, existing, request.aliases, by=request.created_by)
                return Pushed(existing.id, created=False)

    with tempfile.TemporaryDirectory(prefix=temp_prefix("push"), dir=tmp_dir) as tmp:
        source = Path(tmp) / SOURCE_FILE
        source.write_bytes(data)
        with reporter.task("uploading", total=len(data), unit="bytes") as advance:
            storage.put_file(digest, source, progress=advance)
    folder_files.store(storage, extras)

    with db.transaction() as session:
        adapters, versions = AdapterRepository(session), VersionRepository(session)
        adapter = adapters.get(request.name)
        if adapter is None:
            if request.task is None:
                raise InvalidRequest(f"{request.name} is a new adapter: give its task (--task)")
            adapter = adapters.ensure(
                request.name,
                task=request.task,
                base_model=request.base_model or config_base_model,
                description=request.description,
            )
        adapter = adapters.lock(adapter)
        _check_same_adapter(adapter, request.task, request.base_model)
        existing = versions.live_by_content(adapter, content)  # pushed while we uploaded?
        if existing is not None:
            _apply_push_aliases(session, existing, request.aliases, by=request.created_by)
            return Pushed(existing.id, created=False)
        if adapter.base_model is None:
            adapter.base_model = request.base_model or config_base_model
        if request.description is not None:
            adapter.description = request.description
        adapters.add_tags(adapter, request.tags)
        number = adapters.next_version_number(adapter)
        BlobRepository(session).ensure(digest, len(data))
        for extra in extras:
            BlobRepository(session).ensure(extra.sha256, extra.size)
        version = versions.add(
            Version(
                adapter_id=adapter.id,
                number=number,
                status=VersionStatus.PENDING.value,
                source_digest=digest,
                source_size=len(data),
                content_digest=content,
                files=[VersionFile(**f.record()) for f in extras],
                requested=request.requested,
                peft_config=checkpoint.config,
                compat=facts_of(checkpoint),
                created_by=request.created_by,
                # The model `run_codec` will look for: the adapter's, which the config's fills in.
                wants_base_model=adapter.base_model if wants_model else None,
                base_model_revision=revision,
            )
        )
        labels.update(session, version, request.labels)
        gc.restore(storage, digest, data, tmp_dir)  # collected meanwhile? (see gc.py)
        if enqueue is not None:
            enqueue(session, version)
        return Pushed(version.id, created=True)


def _check_same_adapter(adapter: Adapter, task: str | None, base_model: str | None) -> None:
    if task is not None and task != adapter.task:
        raise AdapterConflict(
            f"{adapter.full_name} holds adapters for task {adapter.task!r}, not {task!r}: "
            "push under another name"
        )
    if base_model is not None and adapter.base_model is not None and base_model != adapter.base_model:
        raise AdapterConflict(
            f"{adapter.full_name} holds adapters for base model {adapter.base_model!r}, not {base_model!r}: "
            "push under another name"
        )


def _apply_push_aliases(
    session: Session, version: Version, aliases: tuple[str, ...], *, by: str | None
) -> None:
    """Aliases asked for by a push that found its content already stored."""
    if not aliases:
        return
    if version.status in (VersionStatus.PENDING.value, VersionStatus.COMPRESSING.value):
        requested = dict(version.requested)
        requested["aliases"] = sorted(set(requested.get("aliases", [])) | set(aliases))
        version.requested = requested
        return
    for alias in aliases:
        _point_alias(session, version, alias, by=by)


# ------------------------------------------------------------------------------------------ process


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
    if version.status == VersionStatus.READY.value:
        for alias in version.requested.get("aliases", []):
            _point_alias(session, version, alias, by=version.created_by)
    return version.status


# ---------------------------------------------------------------------------------- resolve and read


def get_adapter(session: Session, name: AdapterName | str) -> Adapter:
    name = name if isinstance(name, AdapterName) else AdapterName.parse(name)
    adapter = AdapterRepository(session).get(name)
    if adapter is None:
        raise AdapterNotFound(f"adapter {name} not found")
    return adapter


def resolve(session: Session, ref: str | Ref) -> Version:
    """The version a ref names. Bare names skip yanked versions; explicit refs do not."""
    ref = as_ref(ref)
    adapter = get_adapter(session, ref.adapter)
    versions = VersionRepository(session)
    if ref.number is not None:
        version = versions.by_number(adapter, ref.number)
        if version is None:
            highest = f" (the highest is {adapter.last_version})" if adapter.last_version else ""
            raise VersionNotFound(f"{adapter.full_name} has no version {ref.number}{highest}")
        return version
    if ref.alias is not None:
        alias = AliasRepository(session).get(adapter, ref.alias)
        if alias is None:
            known = ", ".join(a.name for a in AliasRepository(session).for_adapter(adapter)) or "none"
            raise AliasNotFound(f"{adapter.full_name} has no alias {ref.alias!r} (aliases: {known})")
        return alias.version
    if ref.digest is not None:
        version = versions.by_digest(adapter, ref.digest)
        if version is None:
            raise VersionNotFound(f"{adapter.full_name} has no version with sha256:{ref.digest}")
        return version
    version = versions.latest_ready(adapter)
    if version is None:
        raise VersionNotFound(f"{adapter.full_name} has no ready version that is not yanked")
    return version


def require_ready(version: Version) -> Version:
    if version.status != VersionStatus.READY.value:
        reason = f": {version.error}" if version.error else ""
        raise VersionNotReady(f"{version.ref} is {version.status}{reason}")
    return version


def version_aliases(session: Session, version: Version) -> list[str]:
    return [
        a.name for a in AliasRepository(session).for_adapter(version.adapter) if a.version_id == version.id
    ]


def summarize(
    session: Session, adapters: Sequence[Adapter]
) -> list[tuple[Adapter, int, int | None, dict[str, int]]]:
    """Each adapter with its number of versions, its latest version number and its aliases."""
    ids = [a.id for a in adapters]
    summary = VersionRepository(session).summary(ids)
    aliases = AliasRepository(session).by_adapter_ids(ids)
    return [(a, *summary.get(a.id, (0, None)), aliases.get(a.id, {})) for a in adapters]


def search(
    session: Session,
    *,
    namespace: str | None = None,
    task: str | None = None,
    base_model: str | None = None,
    tag: str | None = None,
    after: AdapterName | None = None,
    limit: int | None = None,
    compat: CompatFilter | None = None,
    labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Adapters matching every given filter, in name order (the first `limit` after `after`), as
    listing rows with their latest version, tags and aliases (see `AdapterRepository.summaries`).
    `compat` filters on the facts of each adapter's latest version."""
    if base_model is not None and limits.base_model_problem(base_model) is not None:
        return []  # no adapter can have it (and PostgreSQL cannot even compare a string with NUL)
    return AdapterRepository(session).summaries(
        namespace=namespace,
        task=task,
        base_model=base_model,
        tag=tag,
        after=after,
        limit=limit,
        compat=compat,
        labels=labels,
    )


def describe(session: Session, name: AdapterName | str) -> dict[str, Any]:
    """One adapter as a listing row; raises AdapterNotFound."""
    name = name if isinstance(name, AdapterName) else AdapterName.parse(name)
    found = AdapterRepository(session).summaries(name=name)
    if not found:
        raise AdapterNotFound(f"adapter {name} not found")
    return found[0]


def list_versions(
    session: Session, name: AdapterName | str, *, after: int | None = None, limit: int | None = None
) -> list[tuple[Version, list[str]]]:
    """An adapter's versions by number (the first `limit` after `after`), each with its aliases."""
    adapter = get_adapter(session, name)
    by_version: dict[int, list[str]] = {}
    for alias in AliasRepository(session).for_adapter(adapter):
        by_version.setdefault(alias.version_id, []).append(alias.name)
    versions = VersionRepository(session).for_adapter(adapter, after=after, limit=limit)
    return [(v, by_version.get(v.id, [])) for v in versions]


# --------------------------------------------------------------------------------------- aliases


def _point_alias(
    session: Session, version: Version, alias: str, *, by: str | None, admin: bool = True
) -> tuple[Alias, int | None]:
    check_alias(alias)
    if version.status != VersionStatus.READY.value:
        reason = f" ({version.error})" if version.error else ""
        raise VersionNotReady(
            f"cannot point alias {alias!r} at {version.ref}: it is {version.status}{reason}"
        )
    if version.yanked:
        raise VersionNotReady(f"cannot point alias {alias!r} at {version.ref}: it is yanked")
    aliases = AliasRepository(session)
    previous = aliases.get(version.adapter, alias)
    alias_audit.check_may_change(previous, admin=admin)
    previous_number = previous.version.number if previous is not None else None
    alias_audit.record(
        session, version.adapter, alias, from_number=previous_number, to_number=version.number, actor=by
    )
    return aliases.set(version.adapter, alias, version, by=by), previous_number


def set_alias(
    session: Session, target: str | Ref, alias: str, *, by: str | None = None, admin: bool = True
) -> tuple[Version, int | None]:
    """Create or move `alias` to the version `target` names (which must be ready and not yanked).
    A protected alias moves only for an `admin`."""
    check_alias(alias)
    version = resolve(session, target)
    _, previous = _point_alias(session, version, alias, by=by, admin=admin)
    return version, previous


def remove_alias(
    session: Session, name: AdapterName | str, alias: str, *, by: str | None = None, admin: bool = True
) -> int:
    """Delete an alias (a protected one only for an `admin`); returns the number of the version it
    pointed to."""
    check_alias(alias)
    adapter = get_adapter(session, name)
    aliases = AliasRepository(session)
    found = aliases.get(adapter, alias)
    if found is None:
        raise AliasNotFound(f"{adapter.full_name} has no alias {alias!r}")
    alias_audit.check_may_change(found, admin=admin)
    number = found.version.number
    alias_audit.record(session, adapter, alias, from_number=number, to_number=None, actor=by)
    aliases.delete(found)
    return number


# ------------------------------------------------------------------------------------------- yank


def yank(session: Session, ref: str | Ref, reason: str | None = None) -> Version:
    """Mark a ready version yanked: it stops being `latest`, but `ns/name:N` still resolves to it."""
    if reason is not None:
        limits.check_text(reason, "yank reason", limits.MAX_YANK_REASON_LENGTH)
    version = require_ready(resolve(session, ref))
    if not version.yanked:
        version.yanked_at = utcnow()
        version.yank_reason = reason
    return version


def unyank(session: Session, ref: str | Ref) -> Version:
    version = resolve(session, ref)
    version.yanked_at = None
    version.yank_reason = None
    return version


# ------------------------------------------------------------------------------------------- pull


def _reconstruct_into(
    storage: BlobStorage, artifact: tuple[str, int], label: str, folder: Path, reporter: Reporter
) -> None:
    from adapters.compress.codec import reconstruct
    from adapters.compress.errors import CompressError
    from adapters.compress.peft_io import write_adapter

    digest, size = artifact
    staged = folder / ".artifact"
    with reporter.task("downloading", total=size, unit="bytes") as advance:
        storage.get_file(digest, staged, progress=advance)
    with reporter.task("reconstructing"):
        try:
            checkpoint = reconstruct(staged)
        except CompressError as exc:
            raise UnsupportedArtifact(f"{label}: its artifact cannot be decoded: {exc}") from None
        staged.unlink()
        write_adapter(checkpoint, folder)


def materialize(
    storage: BlobStorage,
    artifact: tuple[str, int],
    *,
    label: str,
    cache: ReconstructionCache | None = None,
    reporter: Reporter | None = None,
    tmp_dir: Path | None = None,
) -> CachedAdapter:
    """The PEFT files an artifact reconstructs to, open for reading: from the cache when it holds
    them, else fetched (verified against the artifact's sha256), decoded and, with a cache, kept.
    Close the result when done."""
    reporter = reporter or SilentReporter()
    digest = artifact[0]
    if cache is not None and cache.enabled:
        found = cache.get(digest)
        if found is not None:
            return found
        with cache.lock(digest):
            found = cache.get(digest)  # made by another thread while we waited
            if found is not None:
                return found
            with _writing(cache.root):
                folder = cache.staging()
            try:
                with _writing(cache.root):
                    _reconstruct_into(storage, artifact, label, folder, reporter)
                    return cache.put(digest, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    with (
        _writing(tmp_dir),
        tempfile.TemporaryDirectory(prefix=temp_prefix("reconstruct"), dir=tmp_dir) as tmp,
    ):
        _reconstruct_into(storage, artifact, label, Path(tmp), reporter)
        return open_folder(Path(tmp), digest)


@contextmanager
def _writing(where: Path | None) -> Iterator[None]:
    """OSErrors of writing reconstructed files (a full disk, a quota) as one StorageError naming the
    folder: the server's disk, not the caller's input, is what failed."""
    try:
        yield
    except OSError as exc:
        folder = where if where is not None else Path(tempfile.gettempdir())
        raise StorageError(
            f"cannot write reconstructed files under {folder}: {exc.strerror or exc}"
        ) from None


def pull(
    db: Database,
    storage: BlobStorage,
    ref: str | Ref,
    out_dir: Path,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    cache: ReconstructionCache | None = None,
    tmp_dir: Path | None = None,
    sweep_after: float | None = None,
) -> tuple[int, list[str]]:
    """Write the PEFT directory of the version `ref` names to `out_dir`. The artifact is verified
    against its sha256 before it is decoded (and cached reconstructions as they are copied), and
    `out_dir` is only touched once everything succeeded (with `sweep_after`, stale staging folders of
    killed pulls beside it are removed). Returns the version id and the files."""
    out_dir = Path(out_dir)
    with db.transaction() as session:
        version = require_ready(resolve(session, ref))
        version_id, label = version.id, version.ref
        assert version.artifact_digest is not None and version.artifact_size is not None
        artifact = (version.artifact_digest, version.artifact_size)
        stored = [f.record() for f in version.files]
    prepare_output(out_dir, force)
    with staging_for(out_dir, sweep_after=sweep_after) as staging:
        with materialize(
            storage, artifact, label=label, cache=cache, reporter=reporter, tmp_dir=tmp_dir
        ) as adapter:
            try:
                for cached in adapter.files.values():
                    cached.copy_to(staging / cached.name)
                folder_files.fetch(storage, stored, staging)
            except OSError as exc:  # a full disk, a quota, a file size limit
                raise write_error(out_dir, exc) from None
        return version_id, install(staging, out_dir)
