"""The registry's services end to end on both backends (SQLite + folder, PostgreSQL + S3 over HTTP)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file, save_file

from adapters.compress.peft_io import BIN_FILE, CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry import models
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.errors import (
    AdapterConflict,
    AdapterNotFound,
    AdapterTooLarge,
    AliasNotFound,
    BlobCorrupted,
    InvalidAdapterUpload,
    InvalidCodec,
    InvalidName,
    InvalidRef,
    InvalidRequest,
    OutputExists,
    SchemaOutdated,
    VersionNotFound,
    VersionNotReady,
)
from adapters.registry.settings import Settings
from adapters.registry.storage import LocalBlobStorage
from tests.factories import make_adapter
from tests.registry import codecs  # noqa: F401 - registers the test-gate codec


def counts(registry: LocalRegistry) -> dict[str, int]:
    """Rows in every table, and blobs in storage: what 'nothing was written' is checked against."""
    with registry.db.transaction() as session:
        rows = {
            model.__tablename__: session.scalar(sa.select(sa.func.count()).select_from(model))
            for model in (models.Adapter, models.AdapterTag, models.Version, models.Alias, models.Blob)
        }
    return rows | {"stored blobs": len(stored_blobs(registry))}


def stored_blobs(registry: LocalRegistry) -> list[str]:
    storage = registry.storage
    if isinstance(storage, LocalBlobStorage):
        return sorted(p.name for p in storage.root.rglob("*") if p.is_file())
    listing = storage._client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def corrupt(registry: LocalRegistry, digest: str) -> None:
    storage = registry.storage
    if isinstance(storage, LocalBlobStorage):
        path = storage.path(digest)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        key = storage.key(digest)
        body = bytearray(storage._client.get_object(Bucket=storage.bucket, Key=key)["Body"].read())
        body[-1] ^= 0xFF
        storage._client.put_object(Bucket=storage.bucket, Key=key, Body=bytes(body))


def copy_adapter(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_push_stores_a_ready_version_and_pull_gives_it_back(registry, adapter_dir, tmp_path):
    result = registry.push(adapter_dir, "acme/support-en", task="support", created_by="ana")
    version = result.version
    assert result.created
    assert (version.ref, version.status, version.codec) == ("acme/support-en:1", "ready", "raw")
    assert version.artifact_digest == version.source_digest  # raw: the artifact is the source blob
    assert version.fidelity["lossless"] is True
    assert version.created_by == "ana"
    pushed_config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    assert version.peft_config == pushed_config | {"target_modules": sorted(pushed_config["target_modules"])}
    assert counts(registry)["blobs"] == 1 and counts(registry)["stored blobs"] == 1

    pulled = registry.pull("acme/support-en", tmp_path / "out")
    assert pulled.files == [CONFIG_FILE, SAFETENSORS_FILE]
    assert json.loads((tmp_path / "out" / CONFIG_FILE).read_text()) == version.peft_config
    original, back = load_file(adapter_dir / SAFETENSORS_FILE), load_file(tmp_path / "out" / SAFETENSORS_FILE)
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) and original[k].dtype == back[k].dtype for k in original)


def test_pushing_the_same_content_twice_returns_the_existing_version(registry, adapter_dir, tmp_path):
    first = registry.push(adapter_dir, "acme/x", task="t")
    # The same tensors saved as a legacy .bin are the same content.
    as_bin = copy_adapter(adapter_dir, tmp_path / "bin")
    torch.save(load_file(as_bin / SAFETENSORS_FILE), as_bin / BIN_FILE)
    (as_bin / SAFETENSORS_FILE).unlink()
    before = counts(registry)
    again = registry.push(as_bin, "acme/x", aliases=["stable"])
    assert not again.created
    assert again.version.number == first.version.number == 1
    assert again.version.aliases == ["stable"]  # the alias asked for still lands
    assert counts(registry) == before | {"aliases": 1}
    # Another adapter may hold the same content as its own version.
    assert registry.push(adapter_dir, "acme/y", task="t").created


def test_the_order_of_target_modules_does_not_make_new_content(registry, adapter_dir, tmp_path):
    """PEFT writes target_modules from a set, so one adapter saved twice may list them differently."""
    first = registry.push(adapter_dir, "acme/x", task="t").version
    reordered = copy_adapter(adapter_dir, tmp_path / "reordered")
    config = json.loads((reordered / CONFIG_FILE).read_text())
    config["target_modules"] = sorted(config["target_modules"], reverse=True)
    (reordered / CONFIG_FILE).write_text(json.dumps(config))
    again = registry.push(reordered, "acme/x")
    assert not again.created and again.version.source_digest == first.source_digest
    assert first.peft_config["target_modules"] == ["q_proj", "v_proj"]


def test_versions_count_up_and_latest_is_the_newest_ready(registry, adapter_dir, other_adapter_dir):
    assert registry.push(adapter_dir, "acme/x", task="t", tags=["en"]).version.number == 1
    second = registry.push(other_adapter_dir, "acme/x", tags=["support"]).version
    assert second.number == 2
    assert registry.resolve("acme/x").number == 2
    assert registry.resolve("acme/x:1").number == 1
    assert registry.resolve(f"acme/x@sha256:{second.source_digest}").number == 2
    [adapter] = registry.list()
    assert (adapter.name, adapter.versions, adapter.latest, adapter.tags) == (
        "acme/x",
        2,
        2,
        ["en", "support"],
    )


def test_aliases_move_and_disappear(registry, adapter_dir, other_adapter_dir):
    registry.push(adapter_dir, "acme/x", task="t", aliases=["prod"])
    registry.push(other_adapter_dir, "acme/x")
    assert registry.resolve("acme/x@prod").number == 1
    moved = registry.set_alias("acme/x", "prod")  # to the latest
    assert (moved.version, moved.previous) == (2, 1)
    assert registry.resolve("acme/x@prod").number == 2
    assert registry.set_alias("acme/x:1", "canary").previous is None
    assert registry.show("acme/x").adapter.aliases == {"canary": 1, "prod": 2}
    assert registry.remove_alias("acme/x", "prod").previous == 2
    with pytest.raises(AliasNotFound, match="no alias 'prod' \\(aliases: canary\\)"):
        registry.resolve("acme/x@prod")
    with pytest.raises(AliasNotFound):
        registry.remove_alias("acme/x", "prod")
    with pytest.raises(InvalidName, match="reserved"):
        registry.set_alias("acme/x:1", "latest")
    with pytest.raises(VersionNotFound, match="no version 9 \\(the highest is 2\\)"):
        registry.set_alias("acme/x:9", "prod")


def test_yanked_versions_are_skipped_by_bare_names_only(registry, adapter_dir, other_adapter_dir):
    registry.push(adapter_dir, "acme/x", task="t")
    registry.push(other_adapter_dir, "acme/x", aliases=["prod"])
    yanked = registry.yank("acme/x:2", "bad eval")
    assert yanked.yanked and yanked.yank_reason == "bad eval"
    assert registry.resolve("acme/x").number == 1
    explicit = registry.resolve("acme/x:2")
    assert explicit.yanked and explicit.number == 2
    assert registry.resolve("acme/x@prod").yanked  # an alias is explicit too
    assert registry.list()[0].latest == 1
    with pytest.raises(VersionNotReady, match="yanked"):
        registry.set_alias("acme/x:2", "canary")
    registry.yank("acme/x:1")
    with pytest.raises(VersionNotFound, match="no ready version that is not yanked"):
        registry.resolve("acme/x")
    assert registry.show("acme/x").version is None
    registry.unyank("acme/x:2")
    assert registry.resolve("acme/x").number == 2


def test_list_filters_by_task_base_model_and_tag(registry, adapter_dir):
    registry.push(adapter_dir, "acme/a", task="support", base_model="llama-7b", tags=["en"])
    registry.push(adapter_dir, "acme/b", task="support", base_model="mistral-7b", tags=["de"])
    registry.push(adapter_dir, "beta/c", task="summarize", base_model="llama-7b", tags=["en", "long"])

    def names(**filters):
        return [a.name for a in registry.list(**filters)]

    assert names() == ["acme/a", "acme/b", "beta/c"]
    assert names(task="support") == ["acme/a", "acme/b"]
    assert names(base_model="llama-7b") == ["acme/a", "beta/c"]
    assert names(tag="en") == ["acme/a", "beta/c"]
    assert names(tag="en", task="summarize") == ["beta/c"]
    assert names(namespace="acme", base_model="mistral-7b") == ["acme/b"]
    assert names(task="nothing") == []


def test_the_base_model_defaults_to_the_config_and_conflicts_are_refused(registry, tmp_path):
    _edit_config(make_adapter(tmp_path / "a"), base_model_name_or_path="org/tiny-llama")
    assert registry.push(tmp_path / "a", "acme/x", task="t").version.number == 1
    assert registry.list()[0].base_model == "org/tiny-llama"
    make_adapter(tmp_path / "b", seed=3)
    before = counts(registry)
    with pytest.raises(AdapterConflict, match="base model 'org/tiny-llama', not 'other/model'"):
        registry.push(tmp_path / "b", "acme/x", base_model="other/model")
    with pytest.raises(AdapterConflict, match="task 't', not 'other'"):
        registry.push(tmp_path / "b", "acme/x", task="other")
    assert counts(registry) == before


def _edit_config(path, **changes):
    config = json.loads((path / CONFIG_FILE).read_text())
    config.update(changes)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _edit_tensor(path, suffix, edit):
    tensors = load_file(path / SAFETENSORS_FILE)
    key = next(k for k in sorted(tensors) if k.endswith(suffix))
    tensors[key] = edit(tensors[key].clone())
    save_file(tensors, path / SAFETENSORS_FILE)


def _set(value):
    def edit(t):
        t[0, 0] = value
        return t

    return edit


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _pickle(path):
    (path / SAFETENSORS_FILE).unlink()
    torch.save({"x": _Payload()}, path / BIN_FILE)


BAD_ADAPTERS = {
    "missing config": (lambda p: (p / CONFIG_FILE).unlink(), "missing adapter_config.json"),
    "malformed safetensors": (
        lambda p: (p / SAFETENSORS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "),
        "malformed safetensors",
    ),
    "truncated safetensors": (
        lambda p: (p / SAFETENSORS_FILE).write_bytes((p / SAFETENSORS_FILE).read_bytes()[:-100]),
        "malformed safetensors",
    ),
    "mismatched shapes": (
        lambda p: _edit_tensor(p, "lora_B.weight", lambda t: torch.zeros(t.shape[0], t.shape[1] + 1)),
        "inconsistent shapes",
    ),
    "nan": (lambda p: _edit_tensor(p, "lora_A.weight", _set(math.nan)), "NaN or Inf"),
    "inf": (lambda p: _edit_tensor(p, "lora_B.weight", _set(-math.inf)), "NaN or Inf"),
    "unknown peft_type": (lambda p: _edit_config(p, peft_type="PREFIX_TUNING"), "unsupported peft_type"),
    "pickle that runs code": (_pickle, "refused by torch.load\\(weights_only=True\\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapters_are_refused_and_nothing_is_written(registry, adapter_dir, tmp_path, case, capsys):
    registry.push(adapter_dir, "acme/x", task="t", aliases=["prod"])
    before = counts(registry)
    damage, message = BAD_ADAPTERS[case]
    bad = copy_adapter(adapter_dir, tmp_path / "bad")
    damage(bad)
    with pytest.raises(InvalidAdapterUpload, match=message):
        registry.push(bad, "acme/x", task="t", aliases=["prod"])
    assert counts(registry) == before
    assert registry.resolve("acme/x@prod").number == 1
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r, d: r.push(d, "Acme/x", task="t"), InvalidName, "invalid namespace 'Acme'"),
        (lambda r, d: r.push(d, "acme", task="t"), InvalidName, "expected namespace/name"),
        (lambda r, d: r.push(d, "acme/x", task="Support Bot"), InvalidName, "invalid task"),
        (lambda r, d: r.push(d, "acme/x", task="t", tags=["a b"]), InvalidName, "invalid tag"),
        (lambda r, d: r.push(d, "acme/x", task="t", aliases=["latest"]), InvalidName, "reserved"),
        (lambda r, d: r.push(d, "acme/new"), InvalidRequest, "new adapter: give its task"),
        (lambda r, d: r.push(d, "acme/x", task="t", codec="zip"), InvalidCodec, "'zip'"),
        (lambda r, d: r.push(d, "acme/x", task="t", params={"k": 1}), InvalidCodec, "no parameters"),
        (lambda r, d: r.resolve("acme/x:0"), InvalidRef, "positive integer"),
        (lambda r, d: r.resolve("nobody/x"), AdapterNotFound, "adapter nobody/x not found"),
        (lambda r, d: r.resolve("acme/x:7"), VersionNotFound, "acme/x has no version 7"),
        (lambda r, d: r.resolve(f"acme/x@sha256:{'0' * 64}"), VersionNotFound, "no version with sha256"),
        (lambda r, d: r.resolve("acme/x@canary"), AliasNotFound, "no alias 'canary'"),
        (lambda r, d: r.pull("acme/x:7", d / "out"), VersionNotFound, "no version 7"),
    ],
)
def test_bad_names_and_refs_get_readable_errors(registry, adapter_dir, call, error, message):
    registry.push(adapter_dir, "acme/x", task="t")
    before = counts(registry)
    with pytest.raises(error, match=message):
        call(registry, adapter_dir)
    assert counts(registry) == before


def test_oversized_adapters_are_refused(backend, adapter_dir):
    with LocalRegistry(Database(backend.database_url), backend.storage, max_upload_bytes=1000) as registry:
        with pytest.raises(AdapterTooLarge, match="more than the limit of 1000"):
            registry.push(adapter_dir, "acme/x", task="t")
        assert set(counts(registry).values()) == {0}


def test_a_corrupted_blob_is_never_served(registry, adapter_dir, tmp_path):
    version = registry.push(adapter_dir, "acme/x", task="t").version
    corrupt(registry, version.artifact_digest)
    pulls = tmp_path / "pulls"
    pulls.mkdir()
    with pytest.raises(BlobCorrupted, match=f"sha256:{version.artifact_digest}"):
        registry.pull("acme/x", pulls / "out")
    assert list(pulls.iterdir()) == []  # neither the output nor a staging folder


def test_a_failure_while_processing_marks_the_version_failed(registry, adapter_dir, tmp_path):
    pending = registry.push(adapter_dir, "acme/x", task="t", process=False).version
    assert pending.status == "pending"
    corrupt(registry, pending.source_digest)
    failed = registry.process("acme/x:1")
    assert failed.status == "failed"
    assert "corrupted" in failed.error
    assert failed.artifact_digest is None
    with pytest.raises(VersionNotReady, match=r"acme/x:1 is failed: blob sha256:.* is corrupted"):
        registry.pull("acme/x:1", tmp_path / "out")
    with pytest.raises(VersionNotReady, match="not pending"):
        registry.process("acme/x:1")
    # The content of a failed version can be pushed again: it becomes a new version.
    registry.storage.delete(pending.source_digest)
    again = registry.push(adapter_dir, "acme/x")
    assert again.created and again.version.number == 2 and again.version.status == "ready"


def test_pull_refuses_to_mix_into_a_folder_with_files(registry, adapter_dir, tmp_path):
    registry.push(adapter_dir, "acme/x", task="t")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not empty"):
        registry.pull("acme/x", out)
    (out / BIN_FILE).write_bytes(b"stale")
    registry.pull("acme/x", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, SAFETENSORS_FILE, "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert registry.pull("acme/x", empty).files == [CONFIG_FILE, SAFETENSORS_FILE]


def test_embedded_registries_create_their_schema_and_servers_must_be_migrated(tmp_path, fresh_pg_url):
    embedded = Settings(home=tmp_path / "home")
    with LocalRegistry.from_settings(embedded) as registry:
        assert registry.list() == []
    assert (tmp_path / "home" / "registry.db").is_file()
    server = Settings(
        home=tmp_path / "server", database_url=fresh_pg_url, storage_url=str(tmp_path / "blobs")
    )
    with LocalRegistry.from_settings(server) as registry:
        with pytest.raises(SchemaOutdated, match="run `adapters db upgrade`"):
            registry.list()
        registry.db.upgrade()
        assert registry.list() == []


def test_a_codec_artifact_is_stored_beside_the_source(registry, adapter_dir, tmp_path):
    version = registry.push(
        adapter_dir, "acme/x", task="t", codec="test-gate", params={"passes": True}
    ).version
    assert (version.status, version.codec, version.codec_params) == ("ready", "test-gate", {"passes": True})
    assert version.artifact_digest != version.source_digest
    assert counts(registry)["blobs"] == counts(registry)["stored blobs"] == 2
    registry.pull("acme/x", tmp_path / "out")
    original, back = load_file(adapter_dir / SAFETENSORS_FILE), load_file(tmp_path / "out" / SAFETENSORS_FILE)
    assert all(torch.equal(original[k], back[k]) for k in original)


def test_missing_the_fidelity_gate_keeps_the_source_or_rejects(registry, adapter_dir, other_adapter_dir):
    kept = registry.push(adapter_dir, "acme/x", task="t", codec="test-gate", params={"passes": False}).version
    assert (kept.status, kept.codec, kept.artifact_digest) == ("ready", "raw", kept.source_digest)
    assert kept.fidelity["fallback"] == "raw" and kept.fidelity["gate_passed"] is False
    # What is stored is described at the top (the source, 1x); the attempt that missed beneath it.
    assert kept.fidelity["ratio"] == 1.0 and kept.fidelity["artifact_bytes"] == kept.source_size
    assert kept.compression.ratio == 1.0 and kept.compression.fallback == "raw"
    attempt = kept.fidelity["attempt"]
    assert attempt["codec"] == "test-gate" and attempt["max_rel_error"] is None  # JSON has no Infinity
    rejected = registry.push(
        other_adapter_dir,
        "acme/x",
        codec="test-gate",
        params={"passes": False},
        on_gate_fail="reject",
        aliases=["prod"],
    ).version
    assert (rejected.status, rejected.error, rejected.artifact_digest) == (
        "rejected",
        "missed the fidelity gate (max_rel_error inf > 0.1)",
        None,
    )
    assert rejected.aliases == []
    assert registry.resolve("acme/x").number == 1
    with pytest.raises(VersionNotReady, match=r"at acme/x:2: it is rejected \(missed the fidelity gate"):
        registry.set_alias("acme/x:2", "prod")
