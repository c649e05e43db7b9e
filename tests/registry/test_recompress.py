"""Re-compression in a registry that compresses inline, on both backends (the embedded SQLite + folder
registry, and PostgreSQL + S3 over moto): a version pushed raw gets a NOLA artifact with its identity
kept and still loads in PEFT; the old artifact goes to garbage collection only after the swap; a
missing source, bad refs and unready versions change nothing; dry runs list. The embedded registry
has no job queue: it re-encodes in the caller's process. (Queued re-compressions: tests/api and
tests/worker.)"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import torch
from peft import PeftModel

from adapters.registry import events, gc, recompress, webhooks
from adapters.registry.errors import InvalidRequest, NotFound, SourceMissing, VersionNotFound
from adapters.registry.models import Blob, Version
from adapters.registry.webhook_models import OutboxEvent
from tests.factories import make_adapter, tiny_llama, token_batch

ON_SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _logits(path) -> torch.Tensor:
    model = PeftModel.from_pretrained(tiny_llama(0), str(path)).eval()
    with torch.no_grad():
        return model(token_batch(seed=0)).logits


def _rows(registry) -> list[tuple]:
    """Everything recompress may change, per version."""
    with registry.db.reading() as session:
        return [
            (v.id, v.number, v.status, v.artifact_digest, v.codec, json.dumps(v.fidelity, sort_keys=True))
            for v in session.scalars(sa.select(Version).order_by(Version.id))
        ]


def test_a_raw_version_is_recompressed_keeping_its_identity_and_still_loads(registry, adapter_dir, tmp_path):
    postgresql = registry.db.dialect == "postgresql"  # webhooks and their outbox: PostgreSQL only
    if postgresql:
        with registry.db.transaction() as session:
            webhooks.create(session, "acme", "http://127.0.0.1:9/hook", [events.VERSION_RECOMPRESSED])
    pushed = registry.push(adapter_dir, "acme/r", task="t", codec="raw", aliases=["prod"]).version
    assert (pushed.status, pushed.codec) == ("ready", "raw")

    report = registry.recompress("acme/r@prod", codec="nola")
    (done,) = report.versions
    assert (done.ref, done.action, done.codec, done.new_codec) == ("acme/r:1", "recompressed", "raw", "nola")
    assert done.ratio == 1.0 and done.new_ratio > 2

    after = registry.resolve("acme/r:1")
    assert (after.number, after.content_digest, after.codec) == (1, pushed.content_digest, "nola")
    assert after.artifact_digest != pushed.artifact_digest
    assert after.fidelity["gate_passed"] is True
    note = after.fidelity["recompressed"]
    assert note["from"] == {"codec": "raw", "artifact_digest": pushed.artifact_digest, "ratio": 1.0}
    assert note["by"] == registry.principal.name
    assert registry.resolve("acme/r@prod").artifact_digest == after.artifact_digest
    with registry.db.reading() as session:
        recorded = list(
            session.scalars(sa.select(OutboxEvent).where(OutboxEvent.type == "version.recompressed"))
        )
    assert len(recorded) == (1 if postgresql else 0)  # SQLite records no events: nothing to deliver
    for event in recorded:
        assert event.payload["data"]["from_codec"] == "raw" and event.payload["data"]["codec"] == "nola"

    pulled = registry.pull("acme/r:1", tmp_path / "pulled")
    original, reconstructed = _logits(adapter_dir), _logits(pulled.path)
    assert not torch.equal(original, reconstructed)  # lossy now, but close to the original
    assert torch.allclose(original, reconstructed, atol=1e-2)


def test_the_old_artifact_is_released_to_gc_only_by_the_swap(registry, tmp_path):
    source = make_adapter(tmp_path / "src", seed=3)
    registry.push(source, "acme/g", task="t", codec="nola")
    old = registry.resolve("acme/g:1")
    assert old.codec == "nola" and old.artifact_digest != old.source_digest
    with registry.db.reading() as session:
        assert session.get(Blob, old.artifact_digest).released_at is None

    (done,) = registry.recompress("acme/g:1", codec="raw").versions
    assert (done.action, done.new_codec, done.new_ratio) == ("recompressed", "raw", 1.0)
    new = registry.resolve("acme/g:1")
    assert new.artifact_digest == new.source_digest
    with registry.db.reading() as session:
        assert session.get(Blob, old.artifact_digest).released_at is not None

    collected = gc.collect_garbage(registry.db, registry.storage, grace_seconds=0)
    assert collected.blobs == [old.artifact_digest]
    assert registry.storage.exists(new.artifact_digest)
    pulled = registry.pull("acme/g:1", tmp_path / "pulled")
    assert torch.equal(_logits(source), _logits(pulled.path))  # raw: bit-exact again


def test_selections_dry_runs_and_what_is_left_alone(registry, adapter_dir, other_adapter_dir):
    registry.push(adapter_dir, "acme/a", task="t", codec="raw")
    registry.push(other_adapter_dir, "acme/a", task="t", codec="raw")
    registry.yank("acme/a:2", "bad")
    registry.push(adapter_dir, "acme/b", task="t", codec="raw")
    registry.push(adapter_dir, "other/c", task="t", codec="raw")
    before = _rows(registry)

    dry = registry.recompress(namespace="acme", codec="nola", dry_run=True)
    assert dry.dry_run and [(v.ref, v.action) for v in dry.versions] == [
        ("acme/a:1", "would-recompress"),  # acme/a:2 is yanked: bulk runs leave it alone
        ("acme/b:1", "would-recompress"),
    ]
    assert [v.ref for v in registry.recompress("acme/a", codec="nola", dry_run=True).versions] == ["acme/a:1"]
    assert [v.ref for v in registry.recompress("acme/a:2", codec="nola", dry_run=True).versions] == [
        "acme/a:2"
    ]
    assert _rows(registry) == before

    for bad, error in [
        ({"ref": "acme/a:9"}, VersionNotFound),
        ({"ref": "acme/zz"}, NotFound),  # adapter-not-found
        ({"ref": "acme/a@nope"}, NotFound),  # alias-not-found
        ({}, InvalidRequest),
        ({"ref": "acme/a:1", "namespace": "acme"}, InvalidRequest),
    ]:
        with pytest.raises(error):
            registry.recompress(codec="nola", **bad)
    assert _rows(registry) == before

    (done,) = registry.recompress("acme/b", codec="nola").versions
    assert (done.ref, done.action) == ("acme/b:1", "recompressed")
    changed = [old for old, new in zip(before, _rows(registry), strict=True) if old != new]
    assert [(row[1], row[4]) for row in changed] == [(1, "raw")]  # acme/b:1 only


def test_a_version_whose_source_is_gone_says_so_and_changes_nothing(registry, adapter_dir):
    pushed = registry.push(adapter_dir, "acme/s", task="t", codec="raw").version
    registry.push(adapter_dir, "acme/p", task="t", codec="raw", process=False)  # stays pending
    registry.storage.delete(pushed.source_digest)
    before = _rows(registry)
    with pytest.raises(SourceMissing, match=r"lossless source .* is missing"):
        registry.recompress("acme/s:1", codec="nola")
    with pytest.raises(InvalidRequest, match="acme/p:1 is pending: only ready versions"):
        registry.recompress("acme/p:1", codec="nola")
    assert _rows(registry) == before


def test_cli_recompresses_a_version_pushed_raw_and_bad_refs_are_one_line_errors(cli, adapter_dir):
    cli("push", adapter_dir, "--name", "acme/c", "--task", "t", "--codec", "raw")
    before = json.loads(cli("show", "acme/c:1", "--json").stdout)
    for args in (
        ["acme/c:7"],
        ["acme/nope"],
        ["not a ref"],
        [],
        ["acme/c:1", "--namespace", "acme"],
        ["acme/c:1", "--codec", "no-such-codec"],
    ):
        result = cli("recompress", *args, code=1)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert json.loads(cli("show", "acme/c:1", "--json").stdout) == before

    listed = json.loads(cli("recompress", "acme/c", "--dry-run", "--json").stdout)
    assert [(v["ref"], v["action"]) for v in listed["versions"]] == [("acme/c:1", "would-recompress")]
    report = json.loads(cli("recompress", "acme/c:1", "--codec", "nola", "--json").stdout)
    assert [(v["action"], v["new_codec"]) for v in report["versions"]] == [("recompressed", "nola")]
    shown = cli("recompress", "acme/c:1", "--codec", "nola", "--dry-run").stdout
    assert shown.startswith("acme/c:1: would-recompress (nola, ratio ")
    assert "1 versions, codec nola: 1 would-recompress" in shown
    assert "adapters recompress --namespace acme --json" in cli("recompress", "--help").stdout


@ON_SQLITE
def test_the_embedded_registry_recompresses_in_process_and_queues_nothing(registry, adapter_dir):
    assert registry.db.dialect == "sqlite" and registry.inline
    registry.push(adapter_dir, "acme/e", task="t", codec="raw")
    before = _rows(registry)
    with pytest.raises(InvalidRequest, match="PostgreSQL registries only"):
        recompress.recompress(registry.db, registry.storage, ref="acme/e:1", codec="nola", inline=False)
    assert _rows(registry) == before
    (done,) = registry.recompress("acme/e:1", codec="nola").versions
    assert (done.action, done.job, done.new_codec) == ("recompressed", None, "nola")
    assert registry.resolve("acme/e:1").codec == "nola"
