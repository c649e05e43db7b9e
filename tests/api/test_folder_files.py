"""Whole adapter folders over the API (PostgreSQL + S3 behind `adapters serve` on loopback): the remote
client pushes and pulls the files beside the weights byte-exact, `huggingface_hub` downloads them, the
download routes serve them with HEAD and ranges, and bad `file` parts are refused with nothing stored."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry.errors import AdapterNotFound, InvalidAdapterUpload
from tests.api.conftest import running_service
from tests.factories import FOLDER_EXTRAS, make_adapter_folder

ALL_FILES = sorted([CONFIG_FILE, SAFETENSORS_FILE, *FOLDER_EXTRAS])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_adapter_folder(tmp_path_factory.mktemp("folder") / "full", seed=4)


@pytest.fixture(scope="module")
def pushed(service, folder):
    """folders/full:1, pushed through the API by the remote client."""
    return service.client().push(folder, "folders/full", task="chat", codec="raw").version


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_remote_client_pushes_and_pulls_a_folder_byte_exact(service, folder, pushed, tmp_path):
    from transformers import AutoTokenizer

    assert [f["name"] for f in pushed.files] == list(FOLDER_EXTRAS)
    result = service.client().pull("folders/full", tmp_path / "pulled")
    assert sorted(result.files) == ALL_FILES
    for name in FOLDER_EXTRAS:
        assert (tmp_path / "pulled" / name).read_bytes() == (folder / name).read_bytes(), name
    assert not (tmp_path / "pulled" / "training_args.bin").exists()
    text = "Hi there"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "pulled")
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    # The same as embedded: the server's own registry pulls the same bytes.
    service.registry.pull("folders/full", tmp_path / "embedded")
    for name in ALL_FILES:
        assert (tmp_path / "pulled" / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes()


def test_huggingface_hub_downloads_every_file(service, folder, pushed, tmp_path):
    token = service.token("read", namespace="folders", name="folders-reader")
    snapshot = Path(
        snapshot_download("folders/full", revision="1", endpoint=service.url, token=token, cache_dir=tmp_path)
    )
    assert snapshot.name == pushed.content_digest[:40]
    assert sorted(p.name for p in snapshot.iterdir()) == ALL_FILES
    for name in FOLDER_EXTRAS:
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes(), name
    api = HfApi(endpoint=service.url, token=token)
    info = api.model_info("folders/full", files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["tokenizer.json"] == (folder / "tokenizer.json").stat().st_size
    readme = hf_hub_download(
        "folders/full", "README.md", endpoint=service.url, token=token, cache_dir=tmp_path / "one"
    )
    assert Path(readme).read_bytes() == (folder / "README.md").read_bytes()


def test_download_routes_serve_the_other_files(service, folder, pushed):
    base = "/v1/adapters/folders/full/versions/1"
    card = (folder / "README.md").read_bytes()
    with service.http(service.admin) as http:
        whole = http.get(f"{base}/files/README.md")
        assert whole.status_code == 200 and whole.content == card
        assert whole.headers["x-content-sha256"] == _sha(card)
        head = http.head(f"{base}/files/README.md")
        assert (
            head.status_code == 200
            and head.content == b""
            and head.headers["content-length"] == str(len(card))
        )
        part = http.get(f"{base}/files/tokenizer.json", headers={"Range": "bytes=5-14"})
        assert part.status_code == 206 and part.content == (folder / "tokenizer.json").read_bytes()[5:15]
        missing = http.get(f"{base}/files/vocab.txt")  # a name a version may hold, but this one does not
        assert missing.status_code == 404 and missing.json()["code"] == "file-not-found"
        archive = http.get(f"{base}/archive")
        with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
            names = sorted(Path(m.name).name for m in tar.getmembers())
            assert names == ALL_FILES
            assert tar.extractfile("full-1/README.md").read() == card


def _upload(config: bytes, weights: bytes, extra: list[tuple[str, bytes]], files: dict | None = None) -> list:
    """Multipart parts of an upload; `files` is the metadata's announcement (default: each extra's
    sha256; without extras and without `files`, no announcement at all, as older clients send)."""
    meta = {"task": "chat", "codec": "raw", "config_sha256": _sha(config), "weights_sha256": _sha(weights)}
    if extra or files is not None:
        meta["files"] = {name: _sha(data) for name, data in extra} if files is None else files
    parts = [
        ("metadata", (None, json.dumps(meta).encode(), "application/json")),
        ("config", (CONFIG_FILE, config, "application/json")),
        ("weights", (SAFETENSORS_FILE, weights, "application/octet-stream")),
    ]
    return parts + [("file", (name, data, "application/octet-stream")) for name, data in extra]


@pytest.fixture
def upload_service(pg_url, s3_endpoint, tmp_path):
    with running_service(pg_url, s3_endpoint, tmp_path / "home") as running:
        yield running


def test_bad_file_parts_are_refused_and_store_nothing(upload_service, adapter_dir):
    config = (adapter_dir / CONFIG_FILE).read_bytes()
    weights = (adapter_dir / SAFETENSORS_FILE).read_bytes()
    card = b"# card\n"
    cases = [
        (_upload(config, weights, [("training_args.bin", b"\x80\x04pickle")]), 422, "a pickle"),
        (_upload(config, weights, [("../README.md", card)]), 422, "not a file adapters store"),
        (_upload(config, weights, [("README.md", card)], files={}), 400, "not announced"),
        (_upload(config, weights, [], files={"README.md": _sha(card)}), 400, "missing file 'README.md'"),
        (_upload(config, weights, [("README.md", card)], files={"README.md": "0" * 64}), 400, "sha256"),
        (_upload(config, weights, [("tokenizer_config.json", b"{not json")]), 422, "not valid JSON"),
    ]
    with upload_service.http(upload_service.admin) as http:
        for parts, status, message in cases:
            response = http.post("/v1/adapters/acme/x/versions", files=parts)
            assert response.status_code == status, response.text
            assert message in response.json()["detail"], response.json()["detail"]
            assert upload_service.stored_keys() == [] and upload_service.registry.list() == []
        # Without `file` parts (as clients from before folders send it) an upload still works.
        plain = _upload(config, weights, [])
        assert http.post("/v1/adapters/acme/x/versions", files=plain).status_code == 201


def test_the_remote_client_refuses_a_file_over_the_limits_before_sending(service, folder, monkeypatch):
    from adapters.registry import limits

    monkeypatch.setattr(limits, "MAX_TEXT_FILE_BYTES", 16)
    with pytest.raises(InvalidAdapterUpload, match=r"README.md: .* more than the limit of 16"):
        service.client().push(folder, "folders/too-big", task="chat", codec="raw")
    with pytest.raises(AdapterNotFound):
        service.registry.adapter("folders/too-big")


def test_the_remote_cli_pushes_each_named_adapter(service, tmp_path, monkeypatch):
    import torch
    from peft import PeftModel

    from adapters.registry.settings import reset_settings
    from tests.api.test_cli_remote import _runner
    from tests.factories import save_two_adapters, tiny_llama, token_batch

    expected = save_two_adapters(tmp_path / "multi")
    cli = _runner(
        monkeypatch, tmp_path / "cli-home", {"ADAPTERS_URL": service.url, "ADAPTERS_TOKEN": service.admin}
    )
    try:
        pushed = json.loads(
            cli("push", tmp_path / "multi", "--name", "folders/multi", "--task", "chat", "--json").stdout
        )
        assert [p["version"]["ref"] for p in pushed] == ["folders/multi:1", "folders/multi-other:1"]
        for name, adapter in (("folders/multi", "default"), ("folders/multi-other", "other")):
            out = tmp_path / adapter
            cli("pull", name, "-o", out)
            with torch.no_grad():
                got = PeftModel.from_pretrained(tiny_llama(0), str(out)).eval()(token_batch()).logits
            assert torch.allclose(got, expected[adapter], atol=1e-6), adapter
    finally:
        reset_settings()
