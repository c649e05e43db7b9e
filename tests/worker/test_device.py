"""A worker compresses on its device: the CPU everywhere, CUDA where the machine has one (and by
default when it has one). Embedded registry (SQLite and a folder), worker in a thread."""

from __future__ import annotations

import pytest
import torch

from adapters.registry.client import LocalRegistry
from adapters.registry.settings import Settings
from adapters.registry.worker import Worker, resolve_device
from tests.devices import DEVICES

PARAMS = [pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else []) for d in DEVICES]


def test_the_default_device_is_cuda_when_present():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device", PARAMS)
def test_a_worker_runs_the_codec_on_its_device(device, adapter_dir, tmp_path):
    settings = Settings(home=tmp_path, compression="queue", device=device)
    with LocalRegistry.from_settings(settings) as registry:
        # A gate this loose passes: the tiny adapter is stored compressed.
        params = {"ratio": 2, "max_weight_error": 1.0}
        pushed = registry.push(adapter_dir, "acme/nola", task="t", codec="nola", params=params).version
        assert pushed.status == "pending"
        assert Worker(settings, registry=registry).run(once=True) == 1
        version = registry.resolve(pushed.ref)
        assert version.status == "ready", version.error
        assert version.codec == "nola" and version.codec_params["device"] == device
        assert version.fidelity["ratio"] > 1
        pulled = registry.pull(pushed.ref, tmp_path / "out")
    assert pulled.files == ["adapter_config.json", "adapter_model.safetensors"]
