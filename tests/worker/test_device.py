"""A worker compresses on its device: the CPU everywhere, CUDA where the machine has one (and by
default when it has one). PostgreSQL (the job queue) and a blob folder, worker in this process."""

from __future__ import annotations

import pytest
import torch

from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.settings import Settings
from adapters.registry.worker import Worker, resolve_device
from tests.conftest import pg_schema
from tests.devices import DEVICES

PARAMS = [pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else []) for d in DEVICES]


def test_the_default_device_is_cuda_when_present():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device", PARAMS)
def test_a_worker_runs_the_codec_on_its_device(device, pg_url, adapter_dir, tmp_path):
    with pg_schema(pg_url) as url:
        database = Database(url)
        database.upgrade()
        database.dispose()
        _run_on(
            device,
            Settings(home=tmp_path, database_url=url, compression="queue", device=device),
            adapter_dir,
            tmp_path,
        )


def _run_on(device: str, settings: Settings, adapter_dir, tmp_path) -> None:
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
