"""Uploads: streamed multipart with a size limit and digests. Whatever is refused stores nothing."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry.errors import AdapterTooLarge, DigestMismatch, InvalidAdapterUpload
from tests.api.conftest import running_service

URL = "/v1/adapters/acme/x/versions"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parts(adapter_dir, **metadata) -> tuple[bytes, bytes, dict]:
    config = (adapter_dir / CONFIG_FILE).read_bytes()
    weights = (adapter_dir / SAFETENSORS_FILE).read_bytes()
    meta = {"task": "t", "config_sha256": _sha(config), "weights_sha256": _sha(weights)} | metadata
    return config, weights, meta


def _files(config: bytes, weights: bytes, meta: dict, weights_name: str = SAFETENSORS_FILE) -> list:
    return [
        ("metadata", (None, json.dumps(meta).encode(), "application/json")),
        ("config", (CONFIG_FILE, config, "application/json")),
        ("weights", (weights_name, weights, "application/octet-stream")),
    ]


@pytest.fixture
def upload_service(pg_url, s3_endpoint, tmp_path):
    """A registry that takes adapters up to 64 kB."""
    with running_service(pg_url, s3_endpoint, tmp_path / "home", max_upload_bytes=64 * 1024) as running:
        yield running


def _nothing_stored(service) -> None:
    assert service.stored_keys() == []
    assert service.registry.list() == []


def test_a_valid_upload_is_stored_once(upload_service, adapter_dir):
    config, weights, meta = _parts(adapter_dir)
    with upload_service.http(upload_service.admin) as http:
        created = http.post(URL, files=_files(config, weights, meta))
        assert created.status_code == 201 and created.headers["location"] == f"{URL}/1"
        again = http.post(URL, files=_files(config, weights, meta))
        assert again.status_code == 200 and again.json()["created"] is False
    assert len(upload_service.stored_keys()) == 1


def test_oversized_uploads_are_refused(upload_service, adapter_dir, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(adapter_dir, big)
    tensors = load_file(big / SAFETENSORS_FILE)
    tensors["base_model.model.lm_head.weight"] = torch.zeros(256, 128)  # 128 kB of extra weights
    save_file(tensors, big / SAFETENSORS_FILE)
    client = upload_service.client()
    with pytest.raises(
        AdapterTooLarge, match=f"^{big}: the adapter's files are larger than the limit of 65536"
    ):
        client.push(big, "acme/x", task="t")
    config, weights, meta = _parts(big)
    request = httpx.Request("POST", "http://x", files=_files(config, weights, meta))
    body, content_type = request.read(), request.headers["content-type"]
    with upload_service.http(upload_service.admin) as http:
        # No Content-Length (chunked): refused once the bytes pass the limit.
        chunked = http.post(
            URL, content=iter([body[:50_000], body[50_000:]]), headers={"Content-Type": content_type}
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413 and chunked.json()["code"] == "adapter-too-large"
    # A Content-Length far beyond the limit is refused before a byte of the body is read.
    host, port = upload_service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {upload_service.admin}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {10**12}\r\n\r\n".encode()
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    _nothing_stored(upload_service)


def _nan_weights(adapter_dir) -> bytes:
    tensors = load_file(adapter_dir / SAFETENSORS_FILE)
    key = next(iter(tensors))
    tensors[key][0, 0] = math.nan
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, Path(tmp) / "w.safetensors")
        return (Path(tmp) / "w.safetensors").read_bytes()


@pytest.mark.parametrize(
    "case",
    [
        "not multipart",
        "garbage body",
        "missing weights",
        "weights first",
        "metadata not json",
        "metadata fields",
        "unknown part",
        "duplicate part",
        "bad weights name",
        "config digest",
        "weights digest",
        "truncated safetensors",
        "nan weights",
        "not a lora config",
        "bad task",
    ],
)
def test_malformed_uploads_are_refused_and_store_nothing(upload_service, adapter_dir, case):
    config, weights, meta = _parts(adapter_dir)
    headers: dict = {}
    files = _files(config, weights, meta)
    content = None
    expected = (400, "invalid-request")
    if case == "not multipart":
        content, headers, files = json.dumps(meta).encode(), {"Content-Type": "application/json"}, None
    elif case == "garbage body":
        content, files = b"--b\r\nnonsense\r\n\r\n\x00\x01", None
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
    elif case == "missing weights":
        files = files[:2]
    elif case == "weights first":
        files = [files[2], files[0], files[1]]
    elif case == "metadata not json":
        files[0] = ("metadata", (None, b"{not json", "application/json"))
    elif case == "metadata fields":
        files = _files(config, weights, meta | {"config_sha256": "xyz", "colour": "red"})
    elif case == "unknown part":
        files.append(("extra", ("x.bin", b"123", "application/octet-stream")))
    elif case == "duplicate part":
        files.append(files[2])
    elif case == "bad weights name":
        files = _files(config, weights, meta, weights_name="model.pt")
    elif case == "config digest":
        files = _files(config + b" ", weights, meta)
        expected = (400, "digest-mismatch")
    elif case == "weights digest":
        files = _files(config, weights[:-1] + b"\0", meta)
        expected = (400, "digest-mismatch")
    elif case == "truncated safetensors":
        files = _files(config, weights[:100], meta | {"weights_sha256": _sha(weights[:100])})
        expected = (422, "invalid-adapter")
    elif case == "nan weights":
        bad = _nan_weights(adapter_dir)
        files = _files(config, bad, meta | {"weights_sha256": _sha(bad)})
        expected = (422, "invalid-adapter")
    elif case == "not a lora config":
        other = json.dumps({"peft_type": "IA3"}).encode()
        files = _files(other, weights, meta | {"config_sha256": _sha(other), "source": "./my-adapter"})
        expected = (422, "invalid-adapter")
    elif case == "bad task":
        files = _files(config, weights, meta | {"task": "Bad Task"})
    with upload_service.http(upload_service.admin) as http:
        response = http.post(URL, files=files, content=content, headers=headers)
    assert (response.status_code, response.json()["code"]) == expected, response.text
    assert "adapters-upload-" not in response.text  # server paths never leak
    _nothing_stored(upload_service)


def test_refusals_name_the_clients_own_path(upload_service, adapter_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken)
    (broken / SAFETENSORS_FILE).write_bytes((adapter_dir / SAFETENSORS_FILE).read_bytes()[:200])
    with pytest.raises(InvalidAdapterUpload, match=f"^{broken}/{SAFETENSORS_FILE}: malformed safetensors"):
        upload_service.client().push(broken, "acme/x", task="t")
    _nothing_stored(upload_service)


def test_a_file_changed_during_upload_is_caught(upload_service, adapter_dir, tmp_path, monkeypatch):
    import adapters.registry.remote_write as remote_write

    real = remote_write.sha256_file
    monkeypatch.setattr(
        remote_write,
        "sha256_file",
        lambda path: ("0" * 64, 0) if path.name == SAFETENSORS_FILE else real(path),
    )
    with pytest.raises(DigestMismatch, match=r"adapter_model\.safetensors: received bytes hash to"):
        upload_service.client().push(adapter_dir, "acme/x", task="t")
    _nothing_stored(upload_service)
