"""Leftovers of killed processes are swept: stale temporary folders, partial blob files, cache and
pull staging folders and incomplete S3 multipart uploads go; fresh ones, those of running processes
and everything else stay. Sweeps run at start-up (embedded commands, workers, the API server),
periodically in the server and workers, and on demand (`adapters maintenance`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.cli import main
from adapters.registry.client import LocalRegistry
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.settings import Settings, reset_settings
from adapters.registry.worker import Worker
from tests.api.conftest import running_service
from tests.worker.slow_codec import killed_push

DAY = 24 * 3600


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftover(path: Path, *, age: float, folder: bool = True) -> Path:
    """A file or a folder with a file in it, last changed `age` seconds ago."""
    if folder:
        path.mkdir(parents=True)
        (path / "source.safetensors").write_bytes(b"x" * 100)
        os.utime(path / "source.safetensors", (time.time() - age, time.time() - age))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


@pytest.fixture
def embedded(monkeypatch, tmp_path):
    home = tmp_path / "home"
    monkeypatch.setenv("ADAPTERS_HOME", str(home))
    for key in ("ADAPTERS_DATABASE_URL", "ADAPTERS_STORAGE_URL", "ADAPTERS_URL"):
        monkeypatch.delenv(key, raising=False)
    reset_settings()
    yield home
    reset_settings()


def test_adapters_maintenance_sweeps_stale_leftovers_and_keeps_the_rest(embedded, adapter_dir):
    settings = Settings(home=embedded)
    with LocalRegistry.from_settings(settings) as registry:
        registry.push(adapter_dir, "acme/x", task="t")
        registry.pull("acme/x", embedded.parent / "pulled")  # a cache entry
    tmp, cache, blobs = settings.tmp_dir, settings.cache_dir, embedded / "blobs" / "sha256"
    dead = _dead_pid()
    stale = [
        _leftover(tmp / f"adapters-push-{dead}-abc_12", age=2 * DAY),
        _leftover(tmp / f"adapters-upload-{dead}-q1w2e3", age=2 * DAY),
        _leftover(cache / ".staging-k3j4h5", age=2 * DAY),
        _leftover(cache / ".trash-0123abcd", age=2 * DAY),
        _leftover(blobs / "ab" / ".abcdef.x1y2z3.part", age=2 * DAY, folder=False),
    ]
    kept = [
        _leftover(tmp / f"adapters-process-{dead}-fresh1", age=60),  # not stale yet
        _leftover(tmp / f"adapters-process-{os.getpid()}-mine12", age=2 * DAY),  # its process runs
        _leftover(tmp / "notes", age=2 * DAY),  # not ours
        _leftover(cache / ".staging-fresh2", age=60),
        _leftover(blobs / "ab" / ".abcdef.fresh3.part", age=60, folder=False),
    ]
    stored = [p for p in blobs.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert stored
    for blob in stored:  # finished blobs are never leftovers, however old
        os.utime(blob, (time.time() - 30 * DAY, time.time() - 30 * DAY))

    result = CliRunner().invoke(main, ["maintenance", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert sorted(report["removed"]) == sorted(str(p) for p in stale)
    assert report["errors"] == []
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept + stored)
    with LocalRegistry.from_settings(settings) as registry:
        assert registry.resolve("acme/x").status == "ready"
        assert len(list(registry.cache.root.iterdir())) == 2  # the entry and the fresh staging folder

    human = CliRunner().invoke(main, ["maintenance", "--older-than", "30"])
    assert human.exit_code == 0 and human.stdout.endswith("3 leftovers removed\n")  # the fresh ones
    assert "--older-than 3600 --json" in CliRunner().invoke(main, ["maintenance", "--help"]).stdout


def test_a_push_killed_mid_compression_leaves_its_folder_under_the_tmp_dir_until_swept(
    embedded, adapter_dir, tmp_path
):
    _, dead = killed_push(adapter_dir, embedded, tmp_path)
    [left] = (embedded / "tmp").glob(f"adapters-process-{dead}-*")  # the codec's folder, in the known place
    assert CliRunner().invoke(main, ["maintenance"]).exit_code == 0
    assert left.exists()  # younger than the threshold
    result = CliRunner().invoke(main, ["maintenance", "--older-than", "0", "--json"])
    assert json.loads(result.stdout)["removed"] == [str(left)] and not left.exists()


def test_an_embedded_command_sweeps_as_it_starts_at_most_once_an_interval(embedded):
    settings = Settings(home=embedded)
    first = _leftover(settings.tmp_dir / f"adapters-push-{_dead_pid()}-aaa111", age=2 * DAY)
    assert CliRunner().invoke(main, ["ls"]).exit_code == 0
    assert not first.exists()
    second = _leftover(settings.tmp_dir / f"adapters-push-{_dead_pid()}-bbb222", age=2 * DAY)
    assert CliRunner().invoke(main, ["ls"]).exit_code == 0
    assert second.exists()  # swept a moment ago: not again before the interval is over


def test_a_killed_pulls_staging_folder_goes_with_the_next_pull_into_that_folder(
    registry, adapter_dir, tmp_path
):
    registry.push(adapter_dir, "acme/x", task="t")
    out = tmp_path / "out"
    stale = _leftover(tmp_path / ".out.k7d_2m9q", age=2 * DAY)
    fresh = _leftover(tmp_path / ".out.a1b2c3d4", age=60)  # maybe a pull running now
    other = _leftover(tmp_path / ".other.k7d_2m9q", age=2 * DAY)
    registry.sweep_after = DAY
    registry.pull("acme/x", out)
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def _uploads(storage: S3BlobStorage) -> list[dict]:
    return storage._client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])


def _start_upload(storage: S3BlobStorage, key: str) -> str:
    client = storage._client
    upload = client.create_multipart_upload(Bucket=storage.bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=storage.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    return upload


def test_incomplete_multipart_uploads_older_than_the_threshold_are_aborted(
    s3_endpoint, s3_bucket, adapter_dir
):
    storage = S3BlobStorage(s3_bucket, "registry", endpoint_url=s3_endpoint)
    killed = _start_upload(storage, "registry/sha256/ab/" + "ab" * 32)
    elsewhere = _start_upload(storage, "other-app/big-file")  # not under the store's prefix
    [listed] = [u for u in _uploads(storage) if u["UploadId"] == killed]
    age = (dt.datetime.now(dt.timezone.utc) - listed["Initiated"]).total_seconds()

    assert storage.sweep(older_than=age + 3600).removed == []  # younger than the threshold: kept
    assert {u["UploadId"] for u in _uploads(storage)} == {killed, elsewhere}
    report = storage.sweep(older_than=max(age - 3600, 0))
    assert report.removed == [f"s3://{s3_bucket}/registry/sha256/ab/{'ab' * 32}#{killed}"]
    assert {u["UploadId"] for u in _uploads(storage)} == {elsewhere}


def test_workers_and_the_api_server_sweep_at_start_and_then_periodically(
    pg_url, s3_endpoint, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    tmp = home / "tmp"
    before_start = _leftover(tmp / f"adapters-upload-{_dead_pid()}-s1s2s3", age=2 * DAY)
    with running_service(pg_url, s3_endpoint, home, maintenance_interval_seconds=0.2) as service:
        _wait_until(lambda: not before_start.exists())  # swept as the server started
        later = _leftover(tmp / f"adapters-upload-{_dead_pid()}-t1t2t3", age=2 * DAY)
        _wait_until(lambda: not later.exists())  # and again a moment later
        storage = service.registry.storage
        assert isinstance(storage, S3BlobStorage)
        worker_home = tmp_path / "worker"
        worker_settings = Settings(
            home=worker_home,
            database_url=service.settings.database_url,
            storage_url=service.settings.storage_url,
            sweep_after_seconds=DAY,
        )
        left = _leftover(worker_settings.tmp_dir / f"adapters-process-{_dead_pid()}-w1w2w3", age=2 * DAY)
        upload = _start_upload(storage, "registry/sha256/cd/" + "cd" * 32)  # moto dates it years back
        monkeypatch.setenv("AWS_ENDPOINT_URL", service.endpoint)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker = Worker(worker_settings)
            assert worker.run(once=True) == 0  # no jobs; it swept as it started
            worker.registry.close()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        assert not left.exists()
        assert upload not in {u["UploadId"] for u in _uploads(storage)}


def _wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
