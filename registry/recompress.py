"""Re-compression: re-encode a ready version from its lossless source with the current codec and its
default fidelity gate, when the codec has improved since the version was pushed.

The registry keeps every version's lossless source: `source_digest` is a foreign key to its blob row
and garbage collection never takes a referenced blob (gc.referenced). Re-compression reads it (a
source whose object is missing from the store, lost or deleted by hand, is `SourceMissing`) and never
changes what names the version: namespace, name, number, content digest, aliases and labels stay, and
a pull still gives the same adapter (the reconstruction of the new artifact). What changes is the
stored artifact and its record: codec, parameters, fidelity (with a `recompressed` note saying from
what, when and by whom) and the `version.recompressed` event in the outbox.

- A run whose artifact misses the gate changes nothing (`kept`): a ready version is never rejected
  or demoted to its source by a re-encoding. One that stores the same artifact is `unchanged`.
- The swap is one transaction that locks the version row and checks the artifact is still the one
  the run started from (else `skipped`: another re-compression won). The new blob is stored and its
  row written before that transaction, and the old artifact is only released (its gc grace period
  starts) by it: there is no moment without a stored artifact, and a pull that resolved the old
  one still finds it until garbage collection runs after the grace period.
- Where the registry compresses inline (embedded), it runs now; on a queue, each version is a
  Procrastinate job (`recompress`, locked per version like compression), on the queue of a live
  worker holding the adapter's base model, else the data-free queue every worker listens on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import events, jobs, processing, push, service
from .codecs import CodecEnvironment
from .db import Database, utcnow
from .errors import InvalidRequest, SourceMissing, StorageError
from .models import Adapter, Blob, Version, VersionStatus
from .progress import SilentReporter
from .queue_repository import WorkerRepository
from .recompress_views import Recompressed, RecompressReport
from .refs import Ref, check_name
from .storage import BlobStorage
from .version_repository import BlobRepository, VersionRepository
from .workers import live_since

log = logging.getLogger("adapters.recompress")

RECOMPRESS_TASK = jobs.RECOMPRESS_TASK
LIVE_SECONDS = 30.0  # a worker seen this recently counts as live (the settings' default)


# ---------------------------------------------------------------------------------------- choosing


def select(session: Session, ref: str | Ref | None = None, namespace: str | None = None) -> list[Version]:
    """The versions to re-encode: the one `ref` names (ns/name:N, @alias, @sha256:...), every ready
    version of an adapter (a bare ns/name), or of a namespace. Bulk selections leave yanked versions
    alone; a version named explicitly must be ready."""
    if (ref is None) == (namespace is None):
        raise InvalidRequest("give either a ref (ns/name:N or ns/name) or a namespace, not both")
    ready = Version.status == VersionStatus.READY.value
    if namespace is not None:
        query = (
            sa.select(Version)
            .join(Adapter, Adapter.id == Version.adapter_id)
            .where(
                Adapter.namespace == check_name(namespace, "namespace"), ready, Version.yanked_at.is_(None)
            )
        )
        return list(session.scalars(query.order_by(Adapter.name, Version.number)))
    parsed = service.as_ref(ref)  # type: ignore[arg-type]
    if parsed.is_latest:
        adapter = service.get_adapter(session, parsed.adapter)
        query = sa.select(Version).where(Version.adapter_id == adapter.id, ready, Version.yanked_at.is_(None))
        return list(session.scalars(query.order_by(Version.number)))
    version = service.resolve(session, parsed)
    if version.status != VersionStatus.READY.value:
        raise InvalidRequest(f"{version.ref} is {version.status}: only ready versions are recompressed")
    return [version]


def ratio(version: Version) -> float | None:
    if not version.artifact_size:
        return None
    return round(version.source_size / version.artifact_size, 3)


def before(version: Version, action: str, **more: Any) -> Recompressed:
    return Recompressed(ref=version.ref, action=action, codec=version.codec, ratio=ratio(version), **more)


def check(codec: str, params: dict[str, Any] | None = None) -> Any:
    """The codec (InvalidCodec when unknown or its parameters are wrong)."""
    return push.check_codec(codec, dict(params or {}))


# ---------------------------------------------------------------------------------------- running


def run(
    db: Database,
    storage: BlobStorage,
    version_id: int,
    *,
    codec: str,
    params: dict[str, Any] | None = None,
    by: str | None = None,
    device: str | None = None,
    environment: CodecEnvironment | None = None,
    tmp_dir: Path | None = None,
) -> Recompressed:
    """Re-encode one ready version now and swap its artifact (module docstring)."""
    with db.reading() as session:
        version = VersionRepository(session).get(version_id)
        if version is None or version.status != VersionStatus.READY.value:
            state = "gone" if version is None else version.status
            raise InvalidRequest(f"version {version_id} is {state}: only ready versions are recompressed")
        old = before(version, "recompressed")
        source = (version.source_digest, version.source_size)
        old_digest = version.artifact_digest
        base_model = version.adapter.base_model
    if not storage.exists(source[0]):
        raise SourceMissing(
            f"{old.ref}: its lossless source sha256:{source[0]} is missing from the blob store; it cannot "
            "be recompressed (restore the blob, or push the adapter again)"
        )
    requested = {"codec": codec, "params": dict(params or {}), "on_gate_fail": "raw"}
    outcome = processing.run_codec(
        storage,
        source,
        requested,
        reporter=SilentReporter(),
        device=device,
        base_model=base_model,
        environment=environment,
        tmp_dir=tmp_dir,
        placement={"recompressed_by": by} if by else None,
    )
    assert outcome.artifact is not None  # on_gate_fail raw: the source is kept rather than rejected
    new_digest, new_size = outcome.artifact
    if outcome.fidelity.get("fallback") == "raw" and old.codec != "raw":
        return old.model_copy(
            update={"action": "kept", "detail": "the new encoding missed the fidelity gate"}
        )
    if new_digest == old_digest:
        return old.model_copy(update={"action": "unchanged", "detail": "the same artifact as stored"})
    with db.transaction() as session:
        version = VersionRepository(session).get(version_id, for_update=True)
        if (
            version is None
            or version.status != VersionStatus.READY.value
            or version.artifact_digest != old_digest
        ):
            return old.model_copy(update={"action": "skipped", "detail": "the version changed meanwhile"})
        BlobRepository(session).ensure(new_digest, new_size)
        note = {
            "from": {"codec": old.codec, "artifact_digest": old_digest, "ratio": old.ratio},
            "at": utcnow().isoformat(),
            "by": by,
        }
        version.artifact_digest, version.artifact_size = new_digest, new_size
        version.codec, version.codec_params = outcome.codec, outcome.codec_params
        version.fidelity = outcome.fidelity | {"recompressed": note}
        version.processed_at = utcnow()
        if old_digest not in (None, version.source_digest):  # its gc grace period starts now
            session.execute(
                sa.update(Blob)
                .where(Blob.sha256 == old_digest)
                .values(released_at=sa.func.now())
                .execution_options(synchronize_session=False)
            )
        session.flush()
        if not storage.exists(new_digest):  # collected between its upload and its row: roll back
            raise StorageError(f"{old.ref}: the new artifact was collected meanwhile; recompress it again")
        events.version_recompressed(session, version, from_codec=old.codec, from_artifact_digest=old_digest)
        done = old.model_copy(
            update={"new_codec": version.codec, "new_ratio": ratio(version), "new_fidelity": version.fidelity}
        )
    log.info("recompressed", extra={"version": done.ref, "codec": done.new_codec, "ratio": done.new_ratio})
    return done


def enqueue(
    session: Session,
    version: Version,
    *,
    codec: str,
    params: dict[str, Any],
    by: str | None,
    live_seconds: float = LIVE_SECONDS,
) -> int | None:
    """Defer the re-encoding of `version` in the session's transaction; None when one is waiting
    already (its queueing lock)."""
    from procrastinate.exceptions import AlreadyEnqueued

    queue = jobs.DATA_FREE_QUEUE
    model = version.adapter.base_model
    if model:
        workers = WorkerRepository(session)
        if workers.holders([model], live_since(workers.now(), live_seconds)):
            queue = jobs.model_queue(model)
    try:
        with session.begin_nested():
            return jobs.defer(
                session,
                task_name=RECOMPRESS_TASK,
                queue=queue,
                priority=jobs.MIN_PRIORITY,  # behind pushes: a re-encoding is never urgent
                lock=f"version:{version.id}",
                queueing_lock=f"recompress:{version.id}",
                task_kwargs={"version_id": version.id, "codec": codec, "params": params, "by": by},
            )
    except AlreadyEnqueued:
        return None


def recompress(
    db: Database,
    storage: BlobStorage,
    *,
    ref: str | Ref | None = None,
    namespace: str | None = None,
    codec: str,
    params: dict[str, Any] | None = None,
    dry_run: bool = False,
    inline: bool = True,
    by: str | None = None,
    device: str | None = None,
    environment: CodecEnvironment | None = None,
    tmp_dir: Path | None = None,
    live_seconds: float = LIVE_SECONDS,
) -> RecompressReport:
    """Re-encode the versions `ref` or `namespace` selects: list them (`dry_run`), run them now
    (`inline`), or queue a job each."""
    check(codec, params)
    report = RecompressReport(codec=codec, dry_run=dry_run)
    if dry_run:
        with db.reading() as session:
            report.versions = [before(v, "would-recompress") for v in select(session, ref, namespace)]
        return report
    if not inline:
        jobs.require_queue(db)
        with db.transaction() as session:
            for version in select(session, ref, namespace):
                job_id = enqueue(
                    session, version, codec=codec, params=dict(params or {}), by=by, live_seconds=live_seconds
                )
                action = "queued" if job_id is not None else "already-queued"
                report.versions.append(before(version, action, job=job_id))
        return report
    with db.reading() as session:
        chosen: Sequence[int] = [v.id for v in select(session, ref, namespace)]
    for version_id in chosen:
        report.versions.append(
            run(
                db,
                storage,
                version_id,
                codec=codec,
                params=params,
                by=by,
                device=device,
                environment=environment,
                tmp_dir=tmp_dir,
            )
        )
    return report


def register(
    app: Any,
    registry: Any,
    *,
    device: str | None,
    max_attempts: int = 1,
    on_run: Callable[[], None] | None = None,
) -> None:
    """Add the `recompress` task to a worker's Procrastinate app. A failed run changes nothing on
    the version; the library retries it (up to `max_attempts` runs), then the job stays failed for
    `adapters jobs ls | retry`. `on_run` is called after every run, failed or not (the worker counts
    its jobs with it)."""
    from procrastinate import RetryStrategy

    def recompress_version(
        version_id: int, codec: str, params: dict[str, Any] | None = None, by: str | None = None
    ) -> str:
        try:
            done = run(
                registry.db,
                registry.storage,
                version_id,
                codec=codec,
                params=params,
                by=by,
                device=device,
                environment=registry.environment,
                tmp_dir=registry.temp_dir(),
            )
        finally:
            if on_run is not None:
                on_run()
        return done.action

    retry = RetryStrategy(max_attempts=max_attempts - 1, exponential_wait=2) if max_attempts > 1 else None
    app.task(name=RECOMPRESS_TASK, retry=retry)(recompress_version)
