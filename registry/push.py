"""Push: validate a PEFT directory, store its canonical bytes (and the folder's other files), and
create the adapter's next version, `pending` until its codec runs (processing.py).

The operation takes the `Database` and runs its own short transactions around the upload: a blob is
stored before any row points to it, and nothing is written for input that fails validation. The
numerics (`adapters.compress`, which loads torch) are imported only when a push runs.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from . import folder_files, gc, labels, limits
from .adapter_repository import AdapterRepository
from .codecs import uses_base_model
from .compat import facts_of
from .db import Database
from .errors import AdapterConflict, AdapterTooLarge, InvalidAdapterUpload, InvalidCodec, InvalidRequest
from .models import Adapter, Version, VersionFile, VersionStatus
from .progress import Reporter, SilentReporter
from .refs import AdapterName, check_alias, check_name
from .service import point_alias
from .storage import BlobStorage
from .sweep import temp_prefix
from .version_repository import BlobRepository, VersionRepository

GateFallback = Literal["raw", "reject"]
# Pushes compress by default: the size is searched for the smallest artifact that passes the
# fidelity gate, and the lossless source is kept when nothing does.
DEFAULT_CODEC = "nola"
SOURCE_FILE = "source.safetensors"


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
        point_alias(session, version, alias, by=by)
