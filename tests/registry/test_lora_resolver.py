"""The LoRA resolver: registry refs to verified, bounded local folders with stable ids, on SQLite + a
folder and PostgreSQL + S3; and the vLLM plugin through vLLM's own interface classes."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import pytest
import torch

from adapters.registry.lora_resolver import LoraCache, LoraResolver, lora_int_id
from tests.engine_variants import variants  # noqa: F401 - fixture
from tests.factories import tiny_llama, token_batch

BASE = "org/tiny-llama"  # the base model the adapters are pushed for


def logits(adapter_dir) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(0), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(token_batch()).logits


def test_resolves_refs_to_cached_folders_with_stable_ids(registry, variants, tmp_path):  # noqa: F811
    registry.push(variants["plain"], "acme/plain", task="chat", base_model=BASE, aliases=["prod"])
    digest = registry.resolve("acme/plain").artifact_digest
    resolver = LoraResolver(registry, LoraCache(tmp_path / "cache", 10**9))

    first = resolver.resolve(BASE, "acme/plain@prod")
    assert first is not None and first.ref == "acme/plain:1" and first.digest == digest
    assert first.path == tmp_path / "cache" / digest
    torch.testing.assert_close(logits(first.path), logits(variants["plain"]), rtol=0, atol=0)
    # Every name of the same content: the same folder and id, in this process and any other.
    for name in ("acme/plain", "acme/plain:1", f"acme/plain@sha256:{digest}"):
        again = resolver.resolve(BASE, name)
        assert (again.path, again.lora_int_id) == (first.path, first.lora_int_id)
    assert first.lora_int_id == lora_int_id(digest) == int(digest[:15], 16) > 0

    # Not ours, not there, or for another model: None, so the engine asks its other resolvers.
    assert resolver.resolve(BASE, "meta-llama/Llama-3.1-8B-lora") is None
    assert resolver.resolve(BASE, "not a ref") is None
    assert resolver.resolve(BASE, "acme/missing@prod") is None
    assert resolver.resolve("org/other-model", "acme/plain") is None
    # A server that serves the model under its own name says which registry model that is.
    renamed = LoraResolver(registry, LoraCache(tmp_path / "cache", 10**9), served_base_model=BASE)
    assert renamed.resolve("/models/local-llama", "acme/plain").path == first.path

    # An adapter that records no base model cannot be checked: it is served for any model.
    registry.push(variants["wide"], "acme/unknown-base", task="chat")
    assert resolver.resolve("org/other-model", "acme/unknown-base") is not None

    # The cache checks what it hands out: a changed file is fetched again.
    weights = first.path / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\0" * 8)
    assert resolver.resolve(BASE, "acme/plain").path == first.path
    assert weights.read_bytes() == original


def test_the_cache_keeps_the_most_recently_used_within_its_bound(registry, variants, tmp_path):  # noqa: F811
    for name in ("plain", "wide", "patterned"):
        registry.push(variants[name], f"acme/{name}", task="chat", base_model=BASE)
    sizes = {}
    probe = LoraCache(tmp_path / "probe", 10**9)
    for name in ("plain", "wide", "patterned"):
        folder = probe.get(registry, registry.resolve(f"acme/{name}"))
        sizes[name] = sum(p.stat().st_size for p in folder.iterdir())
    # Room for wide (the largest) and one small one, not for all three.
    bound = sizes["wide"] + max(sizes["plain"], sizes["patterned"])
    assert bound < sum(sizes.values())
    cache = LoraCache(tmp_path / "cache", bound)
    resolver = LoraResolver(registry, cache)
    digest = {n: registry.resolve(f"acme/{n}").artifact_digest for n in sizes}
    resolver.resolve(BASE, "acme/plain")
    resolver.resolve(BASE, "acme/wide")
    assert cache.entries() == [digest["plain"], digest["wide"]]
    resolver.resolve(BASE, "acme/plain")  # used again: now wide is the least recent
    resolver.resolve(BASE, "acme/patterned")
    assert cache.entries() == [digest["plain"], digest["patterned"]]
    total = sum(
        p.stat().st_size for d in cache.root.iterdir() if not d.name.startswith(".") for p in d.iterdir()
    )
    assert total <= bound


def test_the_vllm_plugin_through_vllms_interface(registry, variants, cli_env, tmp_path):  # noqa: F811
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    from adapters.registry.settings import reset_settings

    registry.push(variants["plain"], "acme/plain", task="chat", base_model=BASE, aliases=["prod"])
    cli_env.setenv("ADAPTERS_VLLM_CACHE_DIR", str(tmp_path / "vllm-cache"))
    reset_settings()
    plugin = next(e for e in entry_points(group="vllm.general_plugins") if e.name == "adapters")
    plugin.load()()  # what vLLM's plugin loader does
    resolver = LoRAResolverRegistry.get_resolver("adapters")
    assert isinstance(resolver, LoRAResolver)

    request = asyncio.run(resolver.resolve_lora(BASE, "acme/plain@prod"))
    assert isinstance(request, LoRARequest)
    digest = registry.resolve("acme/plain").artifact_digest
    assert request.lora_name == "acme/plain@prod" and request.lora_int_id == lora_int_id(digest)
    assert request.lora_path == str(tmp_path / "vllm-cache" / digest)
    torch.testing.assert_close(logits(request.lora_path), logits(variants["plain"]), rtol=0, atol=0)
    assert asyncio.run(resolver.resolve_lora("org/other", "acme/plain@prod")) is None
    assert asyncio.run(resolver.resolve_lora(BASE, "acme/nothing")) is None
    reset_settings()


@pytest.fixture(autouse=True)
def _forget_resolvers():
    """vLLM's resolver registry is process-wide: leave it as it was."""
    from vllm.lora.resolver import LoRAResolverRegistry

    before = dict(LoRAResolverRegistry.resolvers)
    yield
    LoRAResolverRegistry.resolvers.clear()
    LoRAResolverRegistry.resolvers.update(before)
