"""`adapters show` and `adapters workers` on both backends: what a pending version waits for, which
worker compressed a version on which device and why without its base model, and the live workers."""

from __future__ import annotations

import json

import pytest

from adapters.registry import processing
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.queue_repository import WorkerRepository
from tests.registry import jobqueue
from tests.worker import slow_codec  # noqa: F401 - registers the test codecs

MODEL = "tiny-llama"
# Workers take jobs from the job queue (PostgreSQL); the embedded registry compresses inline.
ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture(autouse=True)
def queued(cli_env):
    cli_env.setenv("ADAPTERS_COMPRESSION", "queue")  # pushes wait, pending, for a worker


@ON_POSTGRESQL
def test_show_and_workers_tell_where_jobs_wait_and_ran(cli, backend, adapter_dir, tmp_path):
    pushed = cli(
        "push", adapter_dir, "--name", "acme/w", "--task", "t", "--base-model", MODEL,
        "--codec", "test-slow-base", "--param", f"log={tmp_path / 'runs.log'}", "--json",
    )  # fmt: skip
    assert json.loads(pushed.stdout)["version"]["waiting"]["live_workers"] == 0
    shown = cli("show", "acme/w:1").stdout
    assert (
        f"waiting     for a worker with {MODEL}: no live worker holds it, so from " in shown
        and "any worker may compress it without the model" in shown
    )
    assert json.loads(cli("workers", "--json").stdout) == {"workers": []}
    assert "no live workers" in cli("workers").stderr

    registry = LocalRegistry(Database(backend.database_url), backend.storage)
    with registry.db.transaction() as session:
        workers = WorkerRepository(session)
        workers.announce("gpu-1", host="box", device="cuda:0", models=[MODEL, "org/other"], now=workers.now())
    listed = json.loads(cli("workers", "--json").stdout)["workers"]
    assert [(w["id"], w["host"], w["device"], w["base_models"]) for w in listed] == [
        ("gpu-1", "box", "cuda:0", ["org/other", MODEL])
    ]
    assert "gpu-1" in cli("workers").stdout and f"org/other,{MODEL}" in cli("workers").stdout
    assert f"waiting     for a worker with {MODEL} (1 live worker holds it)" in cli("show", "acme/w:1").stdout

    assert jobqueue.claim(registry, "cpu-1", wait=0) is None  # gpu-1 holds the model and is live
    job = jobqueue.claim(registry, "gpu-1", (MODEL,))
    assert "worker      gpu-1 on cuda:0" in cli("show", "acme/w:1").stdout  # compressing, on that device
    processing.run_job(registry.db, registry.storage, job, device="cuda:0", lease_seconds=60)
    shown = cli("show", "acme/w:1").stdout
    assert "status      ready" in shown and "worker      gpu-1 on cuda:0" in shown and "waiting" not in shown
    registry.close()


@ON_POSTGRESQL
def test_show_says_a_version_was_compressed_without_its_model(cli, backend, adapter_dir, tmp_path):
    cli(
        "push", adapter_dir, "--name", "acme/d", "--task", "t", "--base-model", MODEL,
        "--codec", "test-slow-base", "--param", f"log={tmp_path / 'runs.log'}",
    )  # fmt: skip
    registry = LocalRegistry(Database(backend.database_url), backend.storage)
    job = jobqueue.claim(registry, "cpu-1", wait=0)
    processing.run_job(registry.db, registry.storage, job, device="cpu", lease_seconds=60)
    registry.close()
    shown = cli("show", "acme/d:1").stdout
    assert "worker      cpu-1 on cpu" in shown
    assert f"note        no live worker holds {MODEL}; compressed without it after 0 s" in shown
    record = json.loads(cli("show", "acme/d:1", "--json").stdout)["version"]
    assert (record["worker"], record["device"]) == ("cpu-1", "cpu")
    assert record["fidelity"]["setup"]["base_model_found"] is False
