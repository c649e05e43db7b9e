"""Remote pulls that resume: a cut transfer continues from its `.part` with a Range request (within a
pull's retries, and in the next pull after one gave up), the result is checked against its sha256,
the download cache spares a second transfer, and `pull --offline` works with no server at all."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from adapters.cli import main
from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry.client_cache import ClientCache
from adapters.registry.errors import BlobCorrupted, ServiceUnavailable
from adapters.registry.remote import RemoteRegistry
from adapters.registry.settings import reset_settings
from tests.conftest import free_port
from tests.factories import make_adapter
from tests.proxy import CuttingProxy

FILES_ROUTE = b"get /v1/adapters/pull/big/versions/1/files/adapter_model.safetensors"


@pytest.fixture(scope="module")
def big(service, tmp_path_factory):
    """pull/big:1 (alias prod), a raw adapter of about 160 kB, and the sha256 of each pulled file."""
    folder = make_adapter(
        tmp_path_factory.mktemp("big") / "big", seed=3, r=64,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
    )  # fmt: skip
    service.registry.push(folder, "pull/big", task="support", aliases=["prod"], codec="raw")
    _, files = service.registry.open_files("pull/big:1")
    files.close()
    return {name: f.sha256 for name, f in files.files.items()}, files.files[SAFETENSORS_FILE].size


def _client(service, url: str, cache: ClientCache | None, retries: int = 2) -> RemoteRegistry:
    return RemoteRegistry(url, service.admin, retries=retries, backoff=0, cache=cache)


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _port(service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def test_a_cut_transfer_continues_with_a_range_within_the_pull(service, big, tmp_path):
    digests, size = big
    proxy = CuttingProxy(_port(service), cut_after=size // 2)
    try:
        with _client(service, proxy.url, ClientCache(tmp_path / "cache")) as client:
            client.pull("pull/big@prod", tmp_path / "out")
    finally:
        proxy.close()
    assert proxy.cuts == 1 and b"range: bytes=" in proxy.sent_text()
    assert _digests(tmp_path / "out") == digests
    assert not list((tmp_path / "cache" / "partial").glob("*.part"))  # moved into the cache, whole


def test_without_a_cache_a_cut_transfer_still_continues(service, big, tmp_path):
    digests, size = big
    proxy = CuttingProxy(_port(service), cut_after=size // 2)
    try:
        with _client(service, proxy.url, None) as client:
            client.pull("pull/big:1", tmp_path / "out")
    finally:
        proxy.close()
    assert proxy.cuts == 1 and b"range: bytes=" in proxy.sent_text()
    assert _digests(tmp_path / "out") == digests


def test_the_next_pull_continues_where_a_failed_one_stopped(service, big, tmp_path):
    digests, size = big
    cache = ClientCache(tmp_path / "cache")
    cutting = CuttingProxy(_port(service), cut_after=size // 2)
    try:
        with _client(service, cutting.url, cache, retries=0) as client, pytest.raises(ServiceUnavailable):
            client.pull("pull/big:1", tmp_path / "out")
    finally:
        cutting.close()
    assert not (tmp_path / "out").exists()  # nothing half-written
    part = cache.partial(digests[SAFETENSORS_FILE])
    kept = part.stat().st_size
    assert 0 < kept < size
    recording = CuttingProxy(_port(service), cut_after=10**12)
    try:
        with _client(service, recording.url, cache) as client:
            client.pull("pull/big:1", tmp_path / "out")
    finally:
        recording.close()
    assert f"range: bytes={kept}-".encode() in recording.sent_text()
    assert _digests(tmp_path / "out") == digests and not part.exists()


def test_a_kept_part_with_wrong_bytes_fails_the_check_and_is_dropped(service, big, tmp_path):
    digests, size = big
    cache = ClientCache(tmp_path / "cache")
    part = cache.partial(digests[SAFETENSORS_FILE])
    part.write_bytes(b"\0" * (size // 3))  # not the file's first bytes
    with _client(service, service.url, cache) as client:
        with pytest.raises(BlobCorrupted, match="does not match its sha256"):
            client.pull("pull/big:1", tmp_path / "out")
        assert not part.exists() and not (tmp_path / "out").exists()
        client.pull("pull/big:1", tmp_path / "out")
    assert _digests(tmp_path / "out") == digests


def test_content_in_the_cache_is_not_downloaded_again(service, big, tmp_path):
    digests, _ = big
    cache = ClientCache(tmp_path / "cache")
    with _client(service, service.url, cache) as client:
        client.pull("pull/big:1", tmp_path / "first")
    recording = CuttingProxy(_port(service), cut_after=10**12)
    try:
        with _client(service, recording.url, cache) as client:
            client.pull("pull/big@prod", tmp_path / "second")
    finally:
        recording.close()
    sent = recording.sent_text()
    assert b"head /v1/adapters/pull/big/versions/1/files/adapter_model.safetensors" in sent
    assert FILES_ROUTE not in sent  # the cache had it
    assert _digests(tmp_path / "second") == digests
    # A cached file that changed on disk is not trusted: it is downloaded again.
    blob = cache.blob(digests[SAFETENSORS_FILE])
    blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    with _client(service, service.url, cache) as client:
        client.pull("pull/big:1", tmp_path / "third")
    assert _digests(tmp_path / "third") == digests


def test_the_cache_keeps_to_its_bound(service, big, tmp_path):
    digests, size = big
    cache = ClientCache(tmp_path / "cache", max_bytes=size // 2)  # smaller than the weights
    with _client(service, service.url, cache) as client:
        client.pull("pull/big:1", tmp_path / "out")
    assert _digests(tmp_path / "out") == digests  # the pull is whole all the same
    kept = list((tmp_path / "cache" / "sha256").glob("*/*"))
    assert sum(p.stat().st_size for p in kept) <= size // 2
    assert digests[SAFETENSORS_FILE] not in {p.name for p in kept}  # it did not fit


def _cli(monkeypatch, url: str, token: str, *args, code: int = 0):
    monkeypatch.setenv("ADAPTERS_URL", url)
    monkeypatch.setenv("ADAPTERS_TOKEN", token)
    reset_settings()
    result = CliRunner().invoke(main, [str(a) for a in args])
    reset_settings()
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_pull_offline_serves_from_the_cache_only(service, big, tmp_path, monkeypatch, own_download_cache):
    digests, _ = big
    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    _cli(monkeypatch, service.url, service.admin, "pull", "pull/big@prod", "-o", tmp_path / "online")
    _cli(monkeypatch, service.url, service.admin, "pull", "pull/big", "-o", tmp_path / "latest")
    assert (own_download_cache / "refs" / "pull" / "big" / "@prod").read_text() == "1"
    assert (own_download_cache / "refs" / "pull" / "big" / "@latest").read_text() == "1"
    gone = f"http://127.0.0.1:{free_port()}"  # no server there
    version = service.registry.resolve("pull/big:1")
    for ref in ("pull/big@prod", "pull/big", "pull/big:1", f"pull/big@sha256:{version.source_digest}"):
        out = tmp_path / "offline" / ref.replace("/", "_").replace(":", "_").replace("@", "_")
        result = _cli(monkeypatch, gone, service.admin, "pull", ref, "-o", out, "--offline", "--json")
        assert json.loads(result.stdout)["version"]["number"] == 1
        assert _digests(out) == digests
    args = ("pull", "pull/big@staging", "-o", tmp_path / "x", "--offline")
    missing = _cli(monkeypatch, gone, service.admin, *args, code=1)
    assert "pull/big@staging is not in the download cache" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    assert sorted(p.name for p in (tmp_path / "online").iterdir()) == [CONFIG_FILE, SAFETENSORS_FILE]
