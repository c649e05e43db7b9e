"""The reconstruction cache: pulls reuse it, it stays within its bound, and it never serves bad bytes."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry import pull
from adapters.registry.cache import MANIFEST, ReconstructionCache
from adapters.registry.errors import BlobCorrupted
from tests.factories import adapter_variants


class CountingStorage:
    """Wraps a blob store and counts downloads."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gets = 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_file(self, digest, dest, *, progress=None):
        with self.lock:
            self.gets += 1
        return self.inner.get_file(digest, dest, progress=progress)


@pytest.fixture
def cached_registry(registry, tmp_path):
    registry.cache = ReconstructionCache(tmp_path / "cache", max_bytes=10**8)
    return registry


def test_repeated_pulls_reconstruct_once(cached_registry, adapter_dir, tmp_path):
    registry = cached_registry
    registry.push(adapter_dir, "acme/x", task="t")
    registry.storage = counting = CountingStorage(registry.storage)
    first = registry.pull("acme/x", tmp_path / "one")
    second = registry.pull("acme/x", tmp_path / "two")
    assert counting.gets == 1
    assert first.files == second.files == [CONFIG_FILE, SAFETENSORS_FILE]
    for name in first.files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_concurrent_pulls_of_one_version_reconstruct_once(cached_registry, adapter_dir, tmp_path):
    registry = cached_registry
    registry.push(adapter_dir, "acme/x", task="t")
    registry.storage = counting = CountingStorage(registry.storage)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: registry.pull("acme/x", tmp_path / f"out-{i}"), range(6)))
    assert counting.gets == 1


def test_a_corrupted_cache_entry_is_evicted_and_never_served(cached_registry, adapter_dir, tmp_path):
    registry = cached_registry
    version = registry.push(adapter_dir, "acme/x", task="t").version
    registry.pull("acme/x", tmp_path / "one")
    cached = registry.cache.root / version.artifact_digest / SAFETENSORS_FILE
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupted, match="corrupted"):
        registry.pull("acme/x", tmp_path / "two")
    assert not (tmp_path / "two").exists()
    assert not (registry.cache.root / version.artifact_digest).exists()
    registry.pull("acme/x", tmp_path / "three")  # rebuilt from the verified artifact
    assert (tmp_path / "three" / SAFETENSORS_FILE).read_bytes() == (
        tmp_path / "one" / SAFETENSORS_FILE
    ).read_bytes()


def test_a_truncated_or_broken_entry_is_a_miss(cached_registry, adapter_dir, tmp_path):
    registry = cached_registry
    version = registry.push(adapter_dir, "acme/x", task="t").version
    registry.pull("acme/x", tmp_path / "one")
    entry = registry.cache.root / version.artifact_digest
    with (entry / SAFETENSORS_FILE).open("r+b") as fh:
        fh.truncate(10)
    assert registry.cache.get(version.artifact_digest) is None
    assert not entry.exists()
    registry.pull("acme/x", tmp_path / "two")
    (entry / MANIFEST).write_text("{not json")
    assert registry.cache.get(version.artifact_digest) is None


def test_the_cache_evicts_the_least_recently_used_past_its_bound(registry, adapter_dir, tmp_path):
    dirs = adapter_variants(adapter_dir, tmp_path / "src", 3)
    digests = []
    for i, path in enumerate(dirs):
        digests.append(registry.push(path, f"acme/x{i}", task="t").version.artifact_digest)
    cache = ReconstructionCache(tmp_path / "cache", max_bytes=10**8)
    registry.cache = cache
    registry.pull("acme/x0", tmp_path / "p0")
    entry_size = cache.total_bytes()
    cache.max_bytes = 2 * entry_size
    registry.pull("acme/x1", tmp_path / "p1")
    past = (cache.root / digests[1] / MANIFEST).stat().st_mtime - 10
    os.utime(cache.root / digests[0] / MANIFEST, (past, past))  # x0 used long ago
    registry.pull("acme/x2", tmp_path / "p2")
    assert sorted(d for _, _, d in cache.entries()) == sorted(digests[1:])
    assert cache.total_bytes() <= cache.max_bytes


def test_an_adapter_larger_than_the_cache_is_still_served(registry, adapter_dir, tmp_path):
    registry.push(adapter_dir, "acme/x", task="t")
    registry.cache = ReconstructionCache(tmp_path / "cache", max_bytes=10)
    assert registry.pull("acme/x", tmp_path / "out").files == [CONFIG_FILE, SAFETENSORS_FILE]
    assert registry.cache.entries() == []


def test_materialize_without_a_cache(registry, adapter_dir):
    version = registry.push(adapter_dir, "acme/x", task="t").version
    artifact = (version.artifact_digest, version.artifact_size)
    with pull.materialize(registry.storage, artifact, label=version.ref) as adapter:
        assert sorted(adapter.files) == [CONFIG_FILE, SAFETENSORS_FILE]
        body = b"".join(adapter.files[SAFETENSORS_FILE].chunks())
    assert len(body) == adapter.files[SAFETENSORS_FILE].size
