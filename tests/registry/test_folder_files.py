"""Whole adapter folders, on SQLite + a folder and PostgreSQL + S3: the files beside the weights
(README, tokenizer, new embeddings) round-trip byte-exact through push, pull and sync, make a
version's identity, and are refused when they are not what their names say; a folder PEFT saved with
several named adapters pushes each of them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
import torch

from adapters.registry import limits
from adapters.registry.errors import InvalidAdapterUpload
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.storage import LocalBlobStorage
from adapters.registry.sync import SyncRequest, sync
from tests.factories import FOLDER_EXTRAS, make_adapter_folder, save_two_adapters, tiny_llama, token_batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_adapter_folder(tmp_path_factory.mktemp("folder") / "full", seed=3)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(token_batch()).logits


def _peft_logits(path: Path) -> torch.Tensor:
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(tiny_llama(0), str(path)))


def _blobs(storage) -> list[str]:
    if isinstance(storage, LocalBlobStorage):
        return sorted(str(p) for p in storage.root.rglob("*") if p.is_file())
    assert isinstance(storage, S3BlobStorage)
    listing = storage._client.list_objects_v2(Bucket=storage.bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_a_folder_round_trips_byte_exact_and_loads(registry, folder, tmp_path):
    from transformers import AutoTokenizer

    pushed = registry.push(folder, "acme/full", task="chat", codec="raw").version
    assert [f["name"] for f in pushed.files] == list(FOLDER_EXTRAS)
    pulled = registry.pull("acme/full", tmp_path / "pulled")
    assert sorted(pulled.files) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", *FOLDER_EXTRAS]
    )
    out = tmp_path / "pulled"
    for name in FOLDER_EXTRAS:
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    assert not (out / "training_args.bin").exists()  # a pickle: never stored
    text = "Hello, world!"
    assert (
        AutoTokenizer.from_pretrained(out)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    )
    assert torch.equal(_peft_logits(out), _peft_logits(folder))


def test_nola_compresses_the_factors_and_the_rest_travels_losslessly(registry, folder, tmp_path):
    version = registry.push(folder, "acme/nola-full", task="chat", codec="nola").version
    assert version.status == "ready" and version.files
    registry.pull(version.ref, tmp_path / "pulled")
    for name in FOLDER_EXTRAS:
        assert (tmp_path / "pulled" / name).read_bytes() == (folder / name).read_bytes(), name
    readme = (folder / "README.md").read_bytes()
    artifact = b"".join(registry.artifact(version.ref)[1])
    assert readme not in artifact  # the codec saw only the adapter


def test_the_content_digest_covers_the_other_files(registry, folder, adapter_dir, tmp_path):
    first = registry.push(folder, "acme/card", task="chat", codec="raw")
    again = registry.push(folder, "acme/card", task="chat", codec="raw")
    assert first.created and not again.created and again.version.number == 1
    changed = tmp_path / "changed"
    make_adapter_folder(changed, seed=3, readme="# The same adapter, a better card\n")
    second = registry.push(changed, "acme/card", codec="raw").version
    assert second.number == 2
    assert second.source_digest == first.version.source_digest  # the same LoRA weights...
    assert second.content_digest != first.version.content_digest  # ...but another version
    assert registry.resolve(f"acme/card@sha256:{second.content_digest}").number == 2
    # Content-addressed: the tokenizer both versions hold is one blob.
    tokenizer = {
        v.number: {f["name"]: f["sha256"] for f in v.files}["tokenizer.json"] for v in (first.version, second)
    }
    assert tokenizer[1] == tokenizer[2]
    bare = tmp_path / "bare"  # the adapter alone (PEFT's folder has a README too)
    bare.mkdir()
    for part in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / part).write_bytes((adapter_dir / part).read_bytes())
    plain = registry.push(bare, "acme/plain", task="chat", codec="raw").version
    assert plain.files == [] and plain.content_digest == plain.source_digest
    # The database keeps a blob a version holds: its row cannot go while the version is there.
    with pytest.raises(sa.exc.IntegrityError), registry.db.transaction() as session:
        session.execute(sa.text("DELETE FROM blobs WHERE sha256 = :d"), {"d": tokenizer[1]})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("tokenizer_config.json", b'{"model_max_length": ', "tokenizer_config.json: not valid JSON"),
        ("README.md", b"\xff\xfe not UTF-8", "README.md: not UTF-8 text"),
        ("new_embeddings.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "new_embeddings.safetensors"),
    ],
)
def test_bad_extra_files_are_refused_with_nothing_written(
    registry, backend, adapter_dir, tmp_path, name, content, message
):
    bad = tmp_path / "bad"
    bad.mkdir()
    for part in ("adapter_config.json", "adapter_model.safetensors"):
        (bad / part).write_bytes((adapter_dir / part).read_bytes())
    (bad / name).write_bytes(content)
    with pytest.raises(InvalidAdapterUpload, match=message) as refused:
        registry.push(bad, "acme/bad", task="chat", codec="raw")
    assert "\n" not in str(refused.value)
    assert registry.list() == [] and _blobs(backend.storage) == []


def test_a_text_file_over_the_limit_is_refused(registry, backend, folder, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TEXT_FILE_BYTES", 64)
    with pytest.raises(InvalidAdapterUpload, match=r"tokenizer.json: \d+ bytes, more than the limit of 64"):
        registry.push(folder, "acme/big", task="chat", codec="raw")
    assert registry.list() == [] and _blobs(backend.storage) == []


def test_push_says_what_it_skips(cli, folder, tmp_path):
    extra = tmp_path / "extra"
    make_adapter_folder(extra, seed=3)
    (extra / "notes.txt").write_text("scratch")
    (extra / "runs").mkdir()
    (extra / ".hidden").write_text("")
    result = cli("push", extra, "--name", "acme/skips", "--task", "chat", "--codec", "raw")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, result.stderr
    assert any("training_args.bin: a pickle (loading it can run any code it carries)" in w for w in warnings)
    assert any("notes.txt: not a file adapters store" in w for w in warnings)
    assert any("runs: a folder" in w for w in warnings)
    shown = json.loads(cli("show", "acme/skips", "--json").stdout)
    assert [f["name"] for f in shown["version"]["files"]] == list(FOLDER_EXTRAS)
    assert f"files       {', '.join(FOLDER_EXTRAS)}" in cli("show", "acme/skips").stdout


def test_a_folder_of_named_adapters_pushes_each(cli, tmp_path):
    expected = save_two_adapters(tmp_path / "multi")
    assert (tmp_path / "multi" / "other" / "adapter_config.json").is_file()  # PEFT's layout
    pushed = json.loads(
        cli("push", tmp_path / "multi", "--name", "acme/multi", "--task", "chat", "--json").stdout
    )
    assert [p["version"]["ref"] for p in pushed] == ["acme/multi:1", "acme/multi-other:1"]
    for name, adapter in (("acme/multi", "default"), ("acme/multi-other", "other")):
        out = tmp_path / f"pulled-{adapter}"
        cli("pull", name, "-o", out)
        assert torch.allclose(_peft_logits(out), expected[adapter], atol=1e-6), adapter
    assert (tmp_path / "pulled-default" / "README.md").is_file()  # PEFT's card, at the root

    one = json.loads(
        cli(
            "push",
            tmp_path / "multi",
            "--name",
            "acme/chosen",
            "--task",
            "chat",
            "--adapter",
            "other",
            "--json",
        ).stdout
    )
    assert one["version"]["ref"] == "acme/chosen:1"
    cli("pull", "acme/chosen", "-o", tmp_path / "chosen")
    assert torch.allclose(_peft_logits(tmp_path / "chosen"), expected["other"], atol=1e-6)

    refused = cli(
        "push", tmp_path / "multi", "--name", "acme/x", "--task", "chat", "--adapter", "third", code=1
    )
    assert "holds no adapter 'third'; it holds: default (the root), other" in refused.stderr


def test_a_folder_of_only_named_adapters_pushes_them(cli, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, target_modules=["q_proj"]), adapter_name="only")
    model.save_pretrained(str(tmp_path / "named"))
    assert not (tmp_path / "named" / "adapter_config.json").exists()
    pushed = json.loads(
        cli("push", tmp_path / "named", "--name", "acme/named", "--task", "chat", "--json").stdout
    )
    assert pushed["version"]["ref"] == "acme/named-only:1"


def test_sync_writes_the_whole_folder_and_follows_its_files(registry, folder, tmp_path):
    registry.push(folder, "acme/synced", task="chat", codec="raw")
    target = tmp_path / "tree"
    report = sync(registry, SyncRequest(target))
    assert report.written == ["acme/synced:1"]
    for name in FOLDER_EXTRAS:
        assert (target / "acme" / "synced" / name).read_bytes() == (folder / name).read_bytes(), name
    changed = tmp_path / "changed"
    make_adapter_folder(changed, seed=3, readme="# v2: only the card changed\n")
    registry.push(changed, "acme/synced", codec="raw")
    assert sync(registry, SyncRequest(target)).written == ["acme/synced:2"]
    assert (target / "acme" / "synced" / "README.md").read_text() == "# v2: only the card changed\n"
    assert sync(registry, SyncRequest(target)).unchanged == ["acme/synced:2"]


def test_export_writes_the_whole_folder(registry, folder, s3_endpoint, tmp_path):
    from adapters.registry.export import export

    registry.push(folder, "acme/exported", task="chat", codec="raw")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"exports-{uuid.uuid4().hex}"
    client.create_bucket(Bucket=bucket)
    written = export(registry, "acme/exported", f"s3://{bucket}/loras/x", endpoint_url=s3_endpoint)
    keys = [f["key"] for f in written["files"]]
    assert sorted(keys) == sorted(
        f"loras/x/{n}" for n in ["adapter_config.json", "adapter_model.safetensors", *FOLDER_EXTRAS]
    )
    assert keys[-1] == "loras/x/adapter_config.json"  # the config last: a reader that finds it finds the rest
    for name in FOLDER_EXTRAS:
        body = client.get_object(Bucket=bucket, Key=f"loras/x/{name}")["Body"].read()
        assert body == (folder / name).read_bytes(), name


def test_a_named_adapter_that_makes_no_valid_name_is_refused_with_the_list(tmp_path):
    from adapters.registry.errors import InvalidRequest
    from adapters.registry.folder_files import push_plan

    for sub in ("", "Other Adapter"):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / "adapter_config.json").write_text("{}")
    with pytest.raises(
        InvalidRequest, match=r"holds several adapters \(default \(the root\), Other Adapter\)"
    ):
        push_plan(tmp_path, "acme/x")
    assert push_plan(tmp_path, "acme/x", "Other Adapter") == [(tmp_path / "Other Adapter", "acme/x")]
    assert push_plan(tmp_path, "acme/x", "default") == [(tmp_path, "acme/x")]
