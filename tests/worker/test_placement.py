"""Workers route jobs by base model, on PostgreSQL and S3 behind the API: the worker that holds a job's
base model gets it while a worker without it stays idle, a job that no live worker can serve is
compressed without its model once the wait is over, and the API lists the live workers and what they
hold. (The workers run in threads of this process, so that they start at once; worker processes, with
their signals: test_worker.py.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.registry.client import LocalRegistry
from adapters.registry.codecs import CodecEnvironment
from adapters.registry.db import Database
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.worker import Worker
from tests.api.conftest import Service, running_service
from tests.factories import adapter_variants
from tests.worker.test_worker import _wait_until

MODEL = "tiny-llama"
LIVE = 2.0  # seconds without a heartbeat before a worker counts as gone


@pytest.fixture
def models_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder.parent


@contextmanager
def _service(pg_url: str, s3_endpoint: str, home: Path, wait: float) -> Iterator[Service]:
    with running_service(
        pg_url,
        s3_endpoint,
        home,
        compression="queue",
        worker_live_seconds=LIVE,
        worker_capability_wait_seconds=wait,
    ) as service:
        yield service


@contextmanager
def _worker(service: Service, name: str, models_dir: Path | None = None) -> Iterator[Worker]:
    """A worker on the service's database and store, running in a thread until the block ends."""
    settings = service.settings.model_copy(update={"worker_poll_seconds": 0.05, "device": "cpu"})
    registry = LocalRegistry(
        Database(settings.database_url),
        S3BlobStorage(service.bucket, "registry", endpoint_url=service.endpoint),
        environment=CodecEnvironment(models_dir),
    )
    worker = Worker(settings, registry=registry, name=name)
    thread = threading.Thread(target=worker.run, name=name)
    thread.start()
    try:
        yield worker
    finally:
        worker.stopping.set()
        thread.join(60)
        registry.close()


def _push(service: Service, path: Path, name: str, log: Path, **params):
    params = {"log": str(log), **params}
    return (
        service.client()
        .push(path, name, task="t", base_model=MODEL, codec="test-slow-base", params=params)
        .version
    )


def test_the_worker_with_the_base_model_gets_every_job_that_wants_it(
    pg_url, s3_endpoint, tmp_path, adapter_dir, models_dir
):
    log = tmp_path / "runs.log"
    with _service(pg_url, s3_endpoint, tmp_path / "home", wait=600) as service:
        client = service.client()
        with _worker(service, "holder", models_dir), _worker(service, "other"):
            _wait_until(lambda: len(client.workers()) == 2)  # both announced before any job exists
            listed = {w.id: (w.device, w.base_models) for w in client.workers()}
            assert listed == {"holder": ("cpu", [MODEL]), "other": ("cpu", [])}

            dirs = adapter_variants(adapter_dir, tmp_path / "src", 4)
            refs = [_push(service, d, f"acme/h{i}", log, seconds=0.1).ref for i, d in enumerate(dirs)]
            finals = [client.wait(ref, timeout=120) for ref in refs]
        assert [v.status for v in finals] == ["ready"] * 4
        for version in finals:
            setup = version.fidelity["setup"]
            assert (version.worker, version.device) == ("holder", "cpu")
            assert setup["base_model_found"] is True and "without_model" not in setup
            assert version.fidelity["base_model_dir"] == str(models_dir / MODEL)
        assert client.workers() == []  # stopped workers take their rows with them


def test_without_a_live_holder_a_job_is_compressed_without_its_model_after_the_wait(
    pg_url, s3_endpoint, tmp_path, adapter_dir
):
    log = tmp_path / "runs.log"
    with _service(pg_url, s3_endpoint, tmp_path / "home", wait=1) as service:
        client = service.client()
        with _worker(service, "other"):
            _wait_until(lambda: len(client.workers()) == 1)
            pushed = _push(service, adapter_dir, "acme/nm", log)
            assert pushed.waiting is not None and pushed.waiting.live_workers == 0
            final = client.wait(pushed.ref, timeout=120)
        assert final.status == "ready" and final.worker == "other"
        assert final.processed_at - final.created_at >= pushed.waiting.without_model_from - pushed.created_at
        setup = final.fidelity["setup"]
        assert setup["base_model_found"] is False
        assert setup["without_model"] == f"no live worker holds {MODEL}; compressed without it after 1 s"
