"""`adapters sync` and `adapters export`, on SQLite + a folder and PostgreSQL + S3: the synced tree
loads with PEFT, follows the registry, and is what vLLM's filesystem resolver loads."""

from __future__ import annotations

import asyncio
import fcntl
import json
from pathlib import Path

import boto3
import pytest
import torch

from adapters.registry.engines import EngineOptions
from adapters.registry.errors import InvalidRequest, OutputError
from adapters.registry.sync import MARKER, SyncRequest, read_marker, sync
from tests.engine_variants import variants  # noqa: F401 - fixture
from tests.factories import tiny_llama, token_batch

SERVED = "org/served-llama"


def resolver_accepts(cache_dir: Path, lora_name: str, base_model_name: str) -> bool:
    """Whether vLLM's own filesystem resolver (VLLM_LORA_RESOLVER_CACHE_DIR=cache_dir) loads
    `lora_name` for a server of `base_model_name`, from the synced folder."""
    from vllm.plugins.lora_resolvers.filesystem_resolver import FilesystemResolver

    request = asyncio.run(FilesystemResolver(str(cache_dir)).resolve_lora(base_model_name, lora_name))
    if request is None:
        return False
    assert request.lora_path == str((cache_dir / lora_name).resolve())
    return True


def logits(adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(0), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(token_batch()).logits


def test_sync_writes_a_tree_that_loads_and_follows_the_registry(registry, variants, tmp_path):  # noqa: F811
    for name in ("plain", "wide", "dora"):
        registry.push(variants[name], f"acme/{name}", task="chat", aliases=["prod"])
    registry.push(variants["saved"], "other/saved", task="vision")
    out = tmp_path / "loras"

    report = sync(registry, SyncRequest(out, task="chat", served_base_model=SERVED))
    assert report.written == ["acme/dora:1", "acme/plain:1", "acme/wide:1"] and not report.unchanged
    assert sorted(p.name for p in (out / "acme").iterdir()) == ["dora", "plain", "wide"]
    assert not (out / "other").exists()
    folder = out / "acme" / "plain"
    assert sorted(p.name for p in folder.iterdir()) == [
        MARKER,
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert resolver_accepts(out, "acme/plain", SERVED)
    assert not resolver_accepts(out, "acme/plain", "tiny-llama")  # the name the adapter was trained on
    assert not resolver_accepts(out, "acme/missing", SERVED)
    # PEFT loads the synced folder and computes what the pushed adapter computes (raw codec: exactly).
    torch.testing.assert_close(logits(folder), logits(variants["plain"]), rtol=0, atol=0)
    marker = read_marker(folder)
    assert marker["ref"] == "acme/plain:1" and marker["served_base_model"] == SERVED
    assert marker["artifact_digest"] == registry.resolve("acme/plain").artifact_digest

    # Again: nothing is rewritten (the files keep their inode and mtime).
    stat = (folder / "adapter_model.safetensors").stat()
    again = sync(registry, SyncRequest(out, task="chat", served_base_model=SERVED))
    assert again.written == [] and again.unchanged == ["acme/dora:1", "acme/plain:1", "acme/wide:1"]
    after = (folder / "adapter_model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)

    # A new version is written in place of the old one; another served name rewrites the config.
    registry.push(variants["patterned"], "acme/plain")
    moved = sync(registry, SyncRequest(out, task="chat", served_base_model=SERVED))
    assert moved.written == ["acme/plain:2"]
    assert read_marker(folder)["version"] == 2
    renamed = sync(registry, SyncRequest(out, task="chat", served_base_model="other/name"))
    assert len(renamed.written) == 3
    assert resolver_accepts(out, "acme/wide", "other/name")

    # --alias: the aliased versions; --engine: only what that engine loads; --prune removes the rest.
    pinned = sync(registry, SyncRequest(out, task="chat", alias="prod", engine="vllm", prune=True))
    assert pinned.written == ["acme/plain:1"] and pinned.pruned == ["acme/dora", "acme/wide"]
    assert [s["adapter"] for s in pinned.skipped] == ["acme/dora:1", "acme/wide:1"]
    assert "DoRA" in pinned.skipped[0]["reason"] and "rank 32" in pinned.skipped[1]["reason"]
    assert sorted(p.name for p in (out / "acme").iterdir()) == ["plain"]
    assert not any(p.name.startswith(".") for p in (out / "acme").iterdir())  # no temporary folders left
    # Raising the engine's rank limit brings wide back.
    back = sync(
        registry,
        SyncRequest(
            out, task="chat", alias="prod", engine="vllm", engine_options=EngineOptions(max_lora_rank=32)
        ),
    )
    assert back.written == ["acme/wide:1"] and back.unchanged == ["acme/plain:1"]


def test_sync_touches_only_what_it_wrote(registry, variants, tmp_path):  # noqa: F811
    registry.push(variants["plain"], "acme/plain", task="chat")
    registry.push(variants["wide"], "acme/wide", task="chat")
    out = tmp_path / "loras"
    mine = out / "acme" / "wide"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("hand-made")
    (out / "team" / "hand").mkdir(parents=True)
    leftover = out / "acme" / ".plain.sync-killed"  # a killed sync's temporary folder
    leftover.mkdir()
    report = sync(registry, SyncRequest(out, prune=True))
    assert report.written == ["acme/plain:1"] and report.conflicts == [str(mine)]
    assert (mine / "notes.txt").read_text() == "hand-made"  # never overwritten
    assert (out / "team" / "hand").is_dir() and report.pruned == []  # never pruned: no marker
    assert not leftover.exists()
    with pytest.raises(InvalidRequest, match="one of 8, 16"):
        sync(registry, SyncRequest(out, engine="vllm", engine_options=EngineOptions(max_lora_rank=12)))
    with (out / ".adapters-sync.lock").open("a") as held:  # another sync at work
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another sync is writing"):
            sync(registry, SyncRequest(out))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        sync(registry, SyncRequest(tmp_path / "file"))


def test_sync_and_export_commands(registry, variants, cli, tmp_path, s3_endpoint, monkeypatch):  # noqa: F811
    registry.push(variants["plain"], "acme/plain", task="chat", aliases=["prod"])
    registry.push(variants["dora"], "acme/dora", task="chat")
    out = tmp_path / "loras"
    body = json.loads(cli("sync", out, "--engine", "vllm", "--served-base-model", SERVED, "--json").stdout)
    assert body["written"] == ["acme/plain:1"] and body["unchanged"] == [] and body["pruned"] == []
    assert body["skipped"][0]["adapter"] == "acme/dora:1"
    text = cli("sync", out, "--engine", "vllm", "--served-base-model", SERVED).stdout
    assert "0 written, 1 unchanged, 0 pruned, 1 skipped" in text
    usage = cli("sync", out, "--max-lora-rank", "32", code=2)
    assert "--max-lora-rank is the limit of an --engine" in usage.stderr
    (out / "acme" / "dora").mkdir()
    blocked = cli("sync", out, code=1)
    assert "exists and was not written by sync" in blocked.stdout

    # Export to S3 (moto's server over HTTP), then read the objects back as LoRAX would.
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="exports")
    exported = json.loads(
        cli(
            "export", "acme/plain@prod", "s3://exports/loras/plain", "--endpoint-url", s3_endpoint, "--json"
        ).stdout
    )
    assert [f["key"] for f in exported["files"]] == [
        "loras/plain/adapter_model.safetensors",
        "loras/plain/adapter_config.json",
    ]
    got = tmp_path / "from-s3"
    got.mkdir()
    for entry in exported["files"]:
        client.download_file("exports", entry["key"], str(got / Path(entry["key"]).name))
    torch.testing.assert_close(logits(got), logits(variants["plain"]), rtol=0, atol=0)
    # The endpoint from the environment, as boto3 reads it.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    cli("export", "acme/plain", "s3://exports/again", "--served-base-model", SERVED)
    config = json.loads(client.get_object(Bucket="exports", Key="again/adapter_config.json")["Body"].read())
    assert config["base_model_name_or_path"] == SERVED
    bad = cli("export", "acme/plain", "https://exports/x", code=1)
    assert "expected s3://bucket/prefix" in bad.stderr
    missing = cli("export", "acme/plain", "s3://no-such-bucket/x", code=1)
    assert "cannot write s3://no-such-bucket/x/adapter_model.safetensors" in missing.stderr
