"""Compression workers as real processes on the queue: they race without doubling work, a killed
worker's job (a compression or a re-compression) is finished by another, SIGTERM finishes or gives
back the current job, and failures are retried and then recorded (the device a worker compresses on:
test_device.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.registry import recompress
from adapters.registry.worker import Worker
from tests.api.conftest import Service, running_service
from tests.factories import adapter_variants
from tests.worker import slow_codec
from tests.worker.slow_codec import runs

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = str(Path(sys.executable).parent / "adapters")


class WorkerProcess:
    """`adapters worker` in a subprocess, with its JSON log lines collected as they come."""

    def __init__(self, service: Service, home: Path, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERS_")}
        env |= service.env() | {
            "ADAPTERS_HOME": str(home),
            "ADAPTERS_EXTRA_CODECS": "tests.worker.slow_codec",  # the test hook
            "ADAPTERS_WORKER_POLL_SECONDS": "0.1",
            "ADAPTERS_WORKER_LEASE_SECONDS": "2",
            "ADAPTERS_WORKER_BACKOFF_SECONDS": "0",
            "ADAPTERS_LOG_FORMAT": "json",
            "ADAPTERS_DEVICE": "cpu",
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env |= {f"ADAPTERS_{k.upper()}": v for k, v in settings.items()}
        self.proc = subprocess.Popen(
            [ADAPTERS, "worker"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"msg": line.rstrip()})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, msg: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e.get("msg") == msg]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker {self.pid} never logged {msg!r}: {self.events[-10:]}")

    def finished(self) -> list[str]:
        """Refs of the jobs this worker recorded as ready."""
        return [e["version"] for e in self.events if e.get("msg") == "job ready"]

    def stop(self, timeout: float = 60, *, terminate: bool = True) -> int:
        """SIGTERM (unless `terminate` is False: it is on its way out already), then its exit code."""
        if terminate and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


@pytest.fixture
def queue_service(pg_url, s3_endpoint, tmp_path) -> Iterator[Service]:
    """An API whose pushes wait, pending, for workers."""
    with running_service(pg_url, s3_endpoint, tmp_path / "home", compression="queue") as running:
        yield running


@pytest.fixture
def workers(queue_service, tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        worker = WorkerProcess(queue_service, tmp_path / f"worker-{len(started)}", **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(30)


def _wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _slow(log: Path, **params) -> dict:
    return {"codec": "test-slow", "params": {"log": str(log), **params}}


def test_two_workers_race_for_jobs_and_do_each_once(queue_service, workers, adapter_dir, tmp_path):
    log = tmp_path / "runs.log"
    racing = [workers(), workers()]
    for worker in racing:
        worker.wait_for("worker started")  # both idle and polling before any job exists
    client = queue_service.client()
    dirs = adapter_variants(adapter_dir, tmp_path / "src", 8)
    refs = [
        client.push(d, f"acme/r{i}", task="t", **_slow(log, seconds=0.3)).version.ref
        for i, d in enumerate(dirs)
    ]
    finals = [client.wait(ref, timeout=120) for ref in refs]
    assert [(v.status, v.attempts) for v in finals] == [("ready", 1)] * 8
    assert [worker.stop() for worker in racing] == [0, 0]
    done = [ref for worker in racing for ref in worker.finished()]
    assert sorted(done) == sorted(refs)  # every job recorded once, by one worker
    assert all(worker.finished() for worker in racing)  # and both took part
    ran = runs(log)
    assert len(ran) == 8 and len({digest for _, digest in ran}) == 8  # each codec run once
    assert {pid for pid, _ in ran} == {worker.pid for worker in racing}


def test_an_idle_worker_wakes_on_a_push_without_polling(queue_service, workers, adapter_dir, tmp_path):
    worker = workers(worker_poll_seconds="600")  # polls too rarely for this test: NOTIFY wakes it
    worker.wait_for("worker started")
    _wait_until(lambda: any(str(e.get("msg", "")).startswith("Starting worker on") for e in worker.events))
    time.sleep(1)  # past its first look at the queue, which found nothing
    client = queue_service.client()
    ref = client.push(adapter_dir, "acme/n", task="t", **_slow(tmp_path / "runs.log")).version.ref
    assert client.wait(ref, timeout=120).status == "ready"
    assert worker.finished() == [ref]
    assert worker.stop() == 0


def test_a_killed_workers_job_is_finished_by_another(queue_service, workers, adapter_dir, tmp_path):
    log, release = tmp_path / "runs.log", tmp_path / "release"
    doomed = workers()
    client = queue_service.client()
    ref = client.push(adapter_dir, "acme/k", task="t", **_slow(log, release=str(release))).version.ref
    _wait_until(lambda: len(runs(log)) == 1)  # the job is running in `doomed`
    doomed.proc.send_signal(signal.SIGKILL)
    assert doomed.proc.wait(30) == -signal.SIGKILL
    stuck = client.resolve(ref)
    assert stuck.status == "compressing" and stuck.attempts == 1
    release.touch()
    rescuer = workers()
    final = client.wait(ref, timeout=120)
    assert (final.status, final.attempts, final.error) == ("ready", 2, None)
    assert [pid for pid, _ in runs(log)] == [doomed.pid, rescuer.pid]
    assert rescuer.finished() == [ref]
    client.pull(ref, tmp_path / "pulled")
    assert rescuer.stop() == 0


def test_a_killed_workers_recompression_is_finished_by_another_with_an_artifact_throughout(
    queue_service, workers, adapter_dir, tmp_path
):
    log, release = tmp_path / "runs.log", tmp_path / "release"
    doomed = workers()
    client, storage = queue_service.client(), queue_service.registry.storage
    ref = client.push(adapter_dir, "acme/rk", task="t", codec="raw").version.ref
    raw = client.wait(ref, timeout=120)
    assert (raw.status, raw.codec) == ("ready", "raw")
    (queued,) = recompress.recompress(
        queue_service.registry.db,
        storage,
        ref=ref,
        codec="test-slow",
        params={"log": str(log), "release": str(release)},
        inline=False,
        by="test",
    ).versions
    assert queued.action == "queued"
    _wait_until(lambda: len(runs(log)) == 1)  # the re-encoding is running in `doomed`
    doomed.proc.send_signal(signal.SIGKILL)
    assert doomed.proc.wait(30) == -signal.SIGKILL

    orphaned = client.resolve(ref)  # the version is untouched and still serves its raw artifact
    assert (orphaned.status, orphaned.codec, orphaned.artifact_digest) == (
        "ready",
        "raw",
        raw.artifact_digest,
    )
    assert [j.status for j in client.list_jobs() if j.id == queued.job] == ["doing"]
    client.pull(ref, tmp_path / "orphaned")

    release.touch()
    rescuer = workers()
    seen = []

    def swapped() -> bool:  # at every look: ready, with an artifact the store holds
        now = client.resolve(ref)
        assert now.status == "ready" and storage.exists(now.artifact_digest), now
        seen.append(now.artifact_digest)
        return now.codec == "test-slow"

    _wait_until(swapped, timeout=120)
    final = client.resolve(ref)
    assert (final.number, final.content_digest) == (1, raw.content_digest)
    assert final.artifact_digest != raw.artifact_digest and set(seen) == {
        raw.artifact_digest,
        final.artifact_digest,
    }
    assert final.fidelity["recompressed"]["from"]["codec"] == "raw"
    assert [pid for pid, _ in runs(log)] == [doomed.pid, rescuer.pid]
    _wait_until(lambda: [j.status for j in client.list_jobs() if j.id == queued.job] == ["succeeded"])
    assert any(
        e.get("msg") == "retrying the job of a stopped worker" and e.get("job") == queued.job
        for e in rescuer.events
    )
    pulled = client.pull(ref, tmp_path / "pulled")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (Path(pulled.path) / name).read_bytes() == (tmp_path / "orphaned" / name).read_bytes()
    assert rescuer.stop() == 0


def test_sigterm_without_grace_gives_the_job_back(queue_service, workers, adapter_dir, tmp_path):
    log, release = tmp_path / "runs.log", tmp_path / "release"
    worker = workers(worker_grace_seconds="0")
    client = queue_service.client()
    ref = client.push(adapter_dir, "acme/t", task="t", **_slow(log, release=str(release))).version.ref
    _wait_until(lambda: len(runs(log)) == 1)
    assert worker.stop() == 0
    back = client.resolve(ref)
    assert (back.status, back.attempts, back.error) == ("pending", 0, None)
    assert any(e.get("msg") == "job released" for e in worker.events)
    release.touch()
    second = workers()
    assert client.wait(ref, timeout=120).status == "ready"
    assert second.stop() == 0


def test_sigterm_lets_the_current_job_finish_and_claims_no_more(
    queue_service, workers, adapter_dir, tmp_path
):
    log, release = tmp_path / "runs.log", tmp_path / "release"
    worker = workers(worker_grace_seconds="60")
    client = queue_service.client()
    dirs = adapter_variants(adapter_dir, tmp_path / "src", 2)
    first = client.push(dirs[0], "acme/f", task="t", **_slow(log, release=str(release))).version.ref
    _wait_until(lambda: len(runs(log)) == 1)
    second = client.push(dirs[1], "acme/g", task="t").version.ref
    worker.proc.send_signal(signal.SIGTERM)
    _wait_until(lambda: any(str(e.get("msg", "")).startswith("signal 15: finishing") for e in worker.events))
    release.touch()
    assert worker.stop(terminate=False) == 0
    assert client.resolve(first).status == "ready"
    assert client.resolve(second).status == "pending"


def test_failures_are_retried_then_recorded_with_the_reason(queue_service, adapter_dir, tmp_path):
    log = tmp_path / "runs.log"
    client = queue_service.client()
    ref = client.push(adapter_dir, "acme/e", task="t", **_slow(log, fail="GPU fell off the bus")).version.ref
    settings = queue_service.settings.model_copy(
        update={"worker_max_attempts": 2, "worker_backoff_seconds": 0, "worker_poll_seconds": 0.05}
    )
    assert Worker(settings, registry=queue_service.registry).run(once=True) == 2
    failed = client.resolve(ref)
    assert (failed.status, failed.attempts) == ("failed", 2)
    assert failed.error == "gave up after 2 attempts: RuntimeError: GPU fell off the bus"
    assert len(runs(log)) == 2
    with pytest.raises(Exception, match="is failed: gave up"):
        client.pull(ref, tmp_path / "out")


assert slow_codec.SlowCodec.name == "test-slow"  # registered here too: the API checks codecs on push
