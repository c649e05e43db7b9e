"""Re-compression through the API with a worker, on PostgreSQL + S3 (moto): an admin queues a
`recompress` job, a worker runs it (and counts it among the jobs it ran, failed or not, up to
--max-jobs), the record shows the new codec and a PEFT pull of the result loads; other tokens are
refused and bad requests are problem+json with a stable type."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from peft import PeftModel

from adapters.registry.errors import PermissionDenied
from adapters.registry.settings import get_settings
from adapters.registry.worker import Worker
from tests.api.conftest import Service, running_service
from tests.factories import tiny_llama, token_batch

PROBLEMS = "https://adapters.dev/problems/"


@pytest.fixture
def queue_service(pg_url, s3_endpoint, tmp_path) -> Iterator[Service]:
    with running_service(pg_url, s3_endpoint, tmp_path / "home", compression="queue") as running:
        yield running


def _work(service: Service, **settings: object) -> int:
    """Run a worker until no job is due; returns the jobs it counted."""
    update = {"worker_poll_seconds": 0.05, "device": "cpu", "worker_capability_wait_seconds": 0}
    return Worker(get_settings().model_copy(update=update | settings), registry=service.registry).run(
        once=True
    )


def _logits(path) -> torch.Tensor:
    model = PeftModel.from_pretrained(tiny_llama(0), str(path)).eval()
    with torch.no_grad():
        return model(token_batch(seed=0)).logits


def _problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == PROBLEMS + code


def test_an_admin_queues_a_recompression_a_worker_runs_it_and_the_pull_loads(
    queue_service, adapter_dir, tmp_path
):
    client = queue_service.client()
    pushed = client.push(adapter_dir, "acme/q", task="t", codec="raw").version
    assert _work(queue_service) == 1
    assert client.resolve(pushed.ref).codec == "raw"

    for token in (queue_service.token("write"), queue_service.token("admin", namespace="other")):
        with pytest.raises(PermissionDenied):
            queue_service.client(token).recompress("acme/q:1", codec="nola")
    dry = client.recompress("acme/q", codec="nola", dry_run=True)
    assert [(v.ref, v.action, v.job) for v in dry.versions] == [("acme/q:1", "would-recompress", None)]

    namespace_admin = queue_service.client(queue_service.token("admin", namespace="acme"))
    (queued,) = namespace_admin.recompress("acme/q:1", codec="nola").versions
    assert queued.action == "queued" and queued.job is not None
    (again,) = client.recompress("acme/q:1", codec="nola").versions
    assert again.action == "already-queued"  # one waiting re-encoding per version
    (job,) = [j for j in client.list_jobs() if j.id == queued.job]
    assert (job.task, job.status, job.version) == ("recompress", "todo", "acme/q:1")
    assert client.resolve("acme/q:1").codec == "raw"  # nothing changes before the job runs

    assert _work(queue_service) == 1  # the re-compression counts as a job run
    assert [j.status for j in client.list_jobs() if j.id == queued.job] == ["succeeded"]
    after = client.resolve("acme/q:1")
    assert (after.number, after.content_digest, after.codec) == (1, pushed.content_digest, "nola")
    assert after.fidelity["recompressed"]["from"]["codec"] == "raw"
    pulled = client.pull("acme/q:1", tmp_path / "pulled")
    assert torch.allclose(_logits(adapter_dir), _logits(pulled.path), atol=1e-2)


def test_bad_requests_are_problems_and_change_nothing(queue_service, adapter_dir):
    client = queue_service.client()
    client.push(adapter_dir, "acme/b", task="t", codec="raw")  # pending: no worker runs here
    with queue_service.http(queue_service.admin) as http:
        _problem(http.post("/v1/adapters/acme/b/versions/1/recompress", json={}), 400, "invalid-request")
        _problem(http.post("/v1/adapters/acme/b/versions/9/recompress"), 404, "version-not-found")
        _problem(http.post("/v1/adapters/acme/zz/recompress"), 404, "adapter-not-found")
        _problem(http.post("/v1/namespaces/Bad!/recompress"), 422, "validation-error")
        _problem(
            http.post("/v1/namespaces/acme/recompress", json={"codec": "no-such-codec"}), 422, "invalid-codec"
        )
        _problem(
            http.post("/v1/namespaces/acme/recompress", json={"dry_run": "maybe"}), 422, "validation-error"
        )
        ok = http.post("/v1/namespaces/acme/recompress", json={"codec": "nola"})
        assert ok.status_code == 200 and ok.json()["versions"] == []  # nothing ready in acme yet
    assert client.list_jobs(queue=None) and all(j.task == "compress" for j in client.list_jobs())
    with queue_service.http(queue_service.token("read")) as http:
        _problem(http.post("/v1/namespaces/acme/recompress"), 403, "forbidden")


def test_a_missing_source_is_a_409_with_its_own_type(queue_service, adapter_dir):
    client = queue_service.client()
    client.push(adapter_dir, "acme/m", task="t", codec="raw")
    _work(queue_service)
    pushed = client.resolve("acme/m:1")
    queue_service.registry.storage.delete(pushed.source_digest)
    # Queued, the job fails in the worker and changes nothing; inline (the server's own registry
    # compressing in the request) the caller gets the problem at once.
    queue_service.registry.inline = True
    try:
        with queue_service.http(queue_service.admin) as http:
            response = http.post("/v1/adapters/acme/m/versions/1/recompress", json={"codec": "nola"})
    finally:
        queue_service.registry.inline = False
    _problem(response, 409, "source-missing")
    assert "missing from the blob store" in response.json()["detail"]
    assert client.resolve("acme/m:1").codec == "raw"

    (queued,) = client.recompress("acme/m:1", codec="nola").versions
    assert _work(queue_service, worker_max_attempts=1) == 1  # a failed run counts too
    assert [j.status for j in client.list_jobs() if j.id == queued.job] == ["failed"]
    after = client.resolve("acme/m:1")
    assert (after.status, after.codec, after.artifact_digest) == ("ready", "raw", pushed.artifact_digest)


def test_max_jobs_counts_recompressions(queue_service, adapter_dir, other_adapter_dir):
    client = queue_service.client()
    for name, folder in (("acme/x", adapter_dir), ("acme/y", other_adapter_dir)):
        client.push(folder, name, task="t", codec="raw")
    assert _work(queue_service) == 2
    report = client.recompress(namespace="acme", codec="nola")
    assert [v.action for v in report.versions] == ["queued", "queued"]
    settings = get_settings().model_copy(
        update={"worker_poll_seconds": 0.05, "device": "cpu", "worker_capability_wait_seconds": 0}
    )
    assert Worker(settings, registry=queue_service.registry).run(once=True, max_jobs=1) == 1
    statuses = sorted(j.status for j in client.list_jobs() if j.task == "recompress")
    assert statuses == ["succeeded", "todo"]  # it stopped after one
    assert sorted(client.resolve(ref).codec for ref in ("acme/x:1", "acme/y:1")) == ["nola", "raw"]
