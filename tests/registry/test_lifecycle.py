"""Deleting versions and adapters, retention, blob garbage collection, alias history and protection,
labels and the base model's revision: on SQLite + a folder and on PostgreSQL + S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from adapters.registry import gc
from adapters.registry.client import LocalRegistry
from adapters.registry.errors import (
    AliasProtected,
    InvalidAdapterUpload,
    InvalidRequest,
    VersionAliased,
    VersionNotFound,
)
from adapters.registry.models import Adapter, Version
from adapters.registry.refs import AdapterName
from adapters.registry.s3_storage import S3BlobStorage
from tests.factories import make_adapter
from tests.registry.test_service import stored_blobs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four adapters of the same shapes with different weights (pushes of one name)."""
    root = tmp_path_factory.mktemp("lifecycle")
    return [make_adapter(root / f"a{seed}", seed=seed) for seed in (21, 22, 23, 24)]


def push(registry: LocalRegistry, path: Path, name: str = "acme/x", **kw) -> int:
    return registry.push(path, name, task="chat", **kw).version.number


def blob_digests(registry: LocalRegistry) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in stored_blobs(registry)}


def sources(registry: LocalRegistry, name: str = "acme/x") -> dict[int, str]:
    return {v.number: v.source_digest for v in registry.versions(name)}


# ------------------------------------------------------------------------------------------ delete


def test_an_aliased_version_is_refused_without_force(registry, dirs):
    push(registry, dirs[0])
    push(registry, dirs[1])
    registry.set_alias("acme/x:1", "prod", by="alice")

    with pytest.raises(VersionAliased, match="prod"):
        registry.delete("acme/x:1")
    assert [v.number for v in registry.versions("acme/x")] == [1, 2]

    deleted = registry.delete("acme/x@prod", force=True, actor="root")
    assert (deleted.versions, deleted.aliases) == ([1], ["prod"])
    assert [v.number for v in registry.versions("acme/x")] == [2]
    assert registry.adapter("acme/x").aliases == {}
    assert registry.adapter("acme/x").versions == 1
    with pytest.raises(VersionNotFound):
        registry.resolve("acme/x:1")
    # The forced removal of the alias is in its history, with who did it.
    events = registry.alias_history("acme/x", "prod").events
    assert [(e.from_version, e.to_version, e.actor) for e in events] == [
        (None, 1, "alice"),
        (1, None, "root"),
    ]
    # Numbers are not handed out again.
    assert push(registry, dirs[2]) == 3


def test_an_adapter_with_aliases_is_deleted_only_when_forced(registry, dirs):
    push(registry, dirs[0])
    registry.set_alias("acme/x:1", "prod")
    with pytest.raises(VersionAliased):
        registry.delete("acme/x")
    deleted = registry.delete("acme/x", force=True)
    assert deleted.adapter_deleted and deleted.versions == [1]
    assert registry.list() == []


# -------------------------------------------------------------------------------------------- gc


def test_a_deleted_adapters_blobs_are_collected_after_the_grace_period_and_not_before(
    registry, dirs, tmp_path
):
    push(registry, dirs[0])
    push(registry, dirs[1])
    push(registry, dirs[0], name="acme/y")  # the same content under another adapter: a shared blob
    shared, own = sources(registry)[1], sources(registry)[2]
    assert {shared, own} <= blob_digests(registry)

    registry.delete("acme/x")
    before = registry.collect_garbage(grace_seconds=3600)
    assert before.blobs == [] and before.orphans == []
    assert {shared, own} <= blob_digests(registry)

    dry = registry.collect_garbage(grace_seconds=0, dry_run=True)
    assert dry.blobs == [own] and dry.bytes > 0
    assert own in blob_digests(registry)

    after = registry.collect_garbage(grace_seconds=0)
    assert after.blobs == [own]
    assert own not in blob_digests(registry)
    assert shared in blob_digests(registry)  # acme/y still references it
    assert registry.pull("acme/y", tmp_path / "out").files
    assert registry.collect_garbage(grace_seconds=0).blobs == []


def test_stored_objects_without_a_row_and_stale_uploads_are_collected_after_the_grace_period(
    registry, tmp_path
):
    data = b"left behind by a push that died between its upload and its row"
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "blob").write_bytes(data)
    registry.storage.put_file(digest, tmp_path / "blob")
    upload, grace = None, 3600.0
    if isinstance(registry.storage, S3BlobStorage):
        storage = registry.storage
        upload = storage._client.create_multipart_upload(
            Bucket=storage.bucket, Key=storage.prefix + "sha256/zz"
        )
        # moto dates uploads years back: a grace period longer than that keeps it.
        [listed] = storage._client.list_multipart_uploads(Bucket=storage.bucket)["Uploads"]
        grace += (dt.datetime.now(dt.timezone.utc) - listed["Initiated"]).total_seconds()

    kept = registry.collect_garbage(grace_seconds=grace)
    assert kept.orphans == [] and kept.uploads == []
    assert digest in blob_digests(registry)

    collected = registry.collect_garbage(grace_seconds=0)
    assert collected.orphans == [digest]
    assert digest not in blob_digests(registry)
    if upload is not None:
        assert collected.uploads == [f"s3://{storage.bucket}/{storage.prefix}sha256/zz#{upload['UploadId']}"]
        assert storage._client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


# ------------------------------------------------------------------------------------- retention


def test_retention_keeps_the_newest_versions_and_every_aliased_one(registry, dirs):
    for path in dirs[:4]:
        push(registry, path)
    registry.set_alias("acme/x:1", "prod")

    result = registry.retain("acme/x", 2)
    assert result.versions == [2]
    assert [v.number for v in registry.versions("acme/x")] == [1, 3, 4]

    # Saved as the adapter's setting, it runs after each push.
    registry.retain("acme/x", 1, save=True)
    assert registry.adapter("acme/x").keep_versions == 1
    assert [v.number for v in registry.versions("acme/x")] == [1, 4]
    push(registry, dirs[1])  # new content: version 5
    assert [v.number for v in registry.versions("acme/x")] == [1, 5]
    registry.clear_retention("acme/x")
    assert registry.adapter("acme/x").keep_versions is None
    push(registry, dirs[2])
    assert [v.number for v in registry.versions("acme/x")] == [1, 5, 6]
    with pytest.raises(InvalidRequest, match="at least 1"):
        registry.retain("acme/x", 0)


# --------------------------------------------------------------------------------- alias history


def test_alias_history_records_each_move_with_its_actor(registry, dirs):
    push(registry, dirs[0])
    push(registry, dirs[1])
    registry.set_alias("acme/x:1", "prod", by="alice")
    registry.set_alias("acme/x:2", "prod", by="bob")
    registry.set_alias("acme/x:2", "prod", by="bob")  # no move: no event
    registry.set_alias("acme/x:1", "canary", by="carol")
    registry.remove_alias("acme/x", "prod", by="dave")

    prod = registry.alias_history("acme/x", "prod").events
    assert [(e.alias, e.from_version, e.to_version, e.actor) for e in prod] == [
        ("prod", None, 1, "alice"),
        ("prod", 1, 2, "bob"),
        ("prod", 2, None, "dave"),
    ]
    assert all(e.at is not None for e in prod)
    assert [e.alias for e in registry.alias_history("acme/x").events] == ["prod", "prod", "canary", "prod"]


def test_a_protected_alias_moves_only_for_an_admin(registry, dirs):
    push(registry, dirs[0])
    push(registry, dirs[1])
    registry.set_alias("acme/x:1", "prod")
    assert registry.protect_alias("acme/x", "prod").protected

    with pytest.raises(AliasProtected, match="protected"):
        registry.set_alias("acme/x:2", "prod", by="ci", admin=False)
    with pytest.raises(AliasProtected):
        registry.remove_alias("acme/x", "prod", admin=False)
    with pytest.raises(AliasProtected):
        registry.check_push_aliases(AdapterName.parse("acme/x"), ["prod"], admin=False)
    assert registry.adapter("acme/x").aliases == {"prod": 1}

    registry.set_alias("acme/x:2", "prod", by="root", admin=True)
    assert registry.adapter("acme/x").aliases == {"prod": 2}
    registry.protect_alias("acme/x", "prod", False)
    registry.set_alias("acme/x:1", "prod", by="ci", admin=False)
    assert registry.adapter("acme/x").aliases == {"prod": 1}


# ---------------------------------------------------------------------------------------- labels


def test_labels_and_base_model_revision_are_kept_shown_and_filtered(registry, dirs, tmp_path):
    push(registry, dirs[0], labels={"dataset": "support-v2", "run": "r1"}, base_model_revision="abc123")
    with_revision = tmp_path / "with-revision"
    shutil.copytree(dirs[1], with_revision)
    config = json.loads((with_revision / "adapter_config.json").read_text())
    (with_revision / "adapter_config.json").write_text(json.dumps(config | {"revision": "v1.0"}))
    push(registry, with_revision, name="acme/y", labels={"dataset": "other"})

    shown = registry.show("acme/x:1").version
    assert shown.labels == {"dataset": "support-v2", "run": "r1"}
    assert shown.base_model_revision == "abc123"
    assert registry.resolve("acme/y").base_model_revision == "v1.0"

    assert [a.name for a in registry.list(labels={"dataset": "support-v2"})] == ["acme/x"]
    assert [a.name for a in registry.list(labels={"dataset": "other"})] == ["acme/y"]
    assert [a.name for a in registry.list(labels={"dataset": "support-v2", "run": "r2"})] == []

    after = registry.label("acme/x:1", {"run": "r2", "eval/accuracy": "0.91"}, remove=["dataset"])
    assert after.labels == {"eval/accuracy": "0.91", "run": "r2"}
    assert [a.name for a in registry.list(labels={"run": "r2"})] == ["acme/x"]
    assert registry.list(labels={"dataset": "support-v2"}) == []


def test_bad_labels_and_revisions_write_nothing(registry, dirs):
    with pytest.raises(InvalidRequest, match="label key"):
        push(registry, dirs[0], labels={"Bad Key": "x"})
    with pytest.raises(InvalidRequest, match="control character"):
        push(registry, dirs[0], labels={"k": "a\x00b"})
    with pytest.raises((InvalidRequest, InvalidAdapterUpload), match="whitespace"):
        push(registry, dirs[0], base_model_revision="a b")
    assert registry.list() == []
    assert blob_digests(registry) == set()


def test_a_push_that_reuses_a_released_blob_keeps_it_from_the_collector(registry, dirs, backend, tmp_path):
    push(registry, dirs[0])
    digest = sources(registry)[1]
    registry.delete("acme/x")  # released: collectable at once with no grace period
    if backend.kind == "postgresql":
        # A push's version row, not yet committed, locks the blob row: the collector skips it.
        with registry.db.transaction() as session:
            adapter = Adapter(namespace="acme", name="y", task="chat")
            session.add(adapter)
            session.flush()
            session.add(
                Version(
                    adapter_id=adapter.id,
                    number=1,
                    source_digest=digest,
                    source_size=1,
                    requested={},
                    peft_config={},
                )
            )
            session.flush()
            assert registry.collect_garbage(grace_seconds=0).blobs == []
        assert digest in blob_digests(registry)
        assert registry.collect_garbage(grace_seconds=0).blobs == []  # referenced now
        registry.delete("acme/y")
    # Collected between a push's upload and its row: the push stores it again.
    blob = tmp_path / "blob"
    registry.storage.get_file(digest, blob)
    assert registry.collect_garbage(grace_seconds=0).blobs == [digest]
    assert digest not in blob_digests(registry)
    gc.restore(registry.storage, digest, blob.read_bytes())
    assert digest in blob_digests(registry)
