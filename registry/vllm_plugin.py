"""The vLLM plugin (`pip install "adapters[vllm]"`): a LoRA resolver that serves registry refs.

vLLM loads it from the `vllm.general_plugins` entry point `adapters` (in every vLLM process, so
registering is cheap: the registry is opened on the first request). With
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, a request whose `model` is a ref vLLM does not know yet
(`acme/support-en@prod`, `acme/support-en:3`) is resolved here: the version is looked up, its base
model checked against the served one, its files fetched into a verified, bounded local cache, and a
`LoRARequest` returned whose int id is derived from the content's sha256.

Settings (besides the registry's ADAPTERS_URL / ADAPTERS_TOKEN or ADAPTERS_DATABASE_URL ...):
ADAPTERS_VLLM_CACHE_DIR (default `$XDG_CACHE_HOME/adapters/vllm`), ADAPTERS_VLLM_CACHE_MAX_BYTES
(default 20 GiB) and ADAPTERS_VLLM_BASE_MODEL (the registry's name of the served model, when vLLM
serves it under another name, e.g. a local path).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from .lora_resolver import LoraCache, LoraResolver

RESOLVER_NAME = "adapters"
DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "adapters" / "vllm"


def resolver_from_env() -> LoraResolver:
    """The resolver the environment describes (the registry as the CLI would open it)."""
    from .client import LocalRegistry
    from .remote import RemoteRegistry
    from .settings import get_settings

    settings = get_settings()
    registry = (
        RemoteRegistry.from_settings(settings) if settings.remote else LocalRegistry.from_settings(settings)
    )
    cache = LoraCache(
        Path(os.environ.get("ADAPTERS_VLLM_CACHE_DIR") or default_cache_dir()).expanduser(),
        int(os.environ.get("ADAPTERS_VLLM_CACHE_MAX_BYTES") or DEFAULT_CACHE_MAX_BYTES),
    )
    return LoraResolver(registry, cache, served_base_model=os.environ.get("ADAPTERS_VLLM_BASE_MODEL") or None)


class RegistryLoRAResolver(LoRAResolver):
    """vLLM's LoRAResolver over a `LoraResolver` (made from the environment on first use)."""

    def __init__(self, core: LoraResolver | None = None) -> None:
        self._core = core
        self._lock = threading.Lock()

    @property
    def core(self) -> LoraResolver:
        with self._lock:
            if self._core is None:
                self._core = resolver_from_env()
            return self._core

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        # The registry's clients block (HTTP, SQL, file copies): keep them off vLLM's event loop.
        resolved = await asyncio.to_thread(self.core.resolve, base_model_name, lora_name)
        if resolved is None:
            return None
        return LoRARequest(
            lora_name=lora_name,
            lora_int_id=resolved.lora_int_id,
            lora_path=str(resolved.path),
            base_model_name=base_model_name,
        )


def register() -> None:
    """The `vllm.general_plugins` entry point."""
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RegistryLoRAResolver())
