"""The job queue over the API: admins for every namespace list, cancel and retry jobs; nobody else
sees them; bad requests are problem+json."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.registry.errors import InvalidRequest, NotFound, PermissionDenied
from tests.api.conftest import Service, running_service


@pytest.fixture
def queue_service(pg_url, s3_endpoint, tmp_path) -> Iterator[Service]:
    with running_service(pg_url, s3_endpoint, tmp_path / "home", compression="queue") as running:
        yield running


def _status(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_admins_list_cancel_and_retry_jobs_and_nobody_else_sees_them(queue_service, adapter_dir):
    client = queue_service.client()
    ref = client.push(adapter_dir, "acme/q", task="t").version.ref
    (job,) = client.list_jobs()
    assert (job.queue, job.status, job.version, job.version_status) == ("compress", "todo", ref, "pending")
    assert client.list_jobs(status="failed") == []
    assert [j.id for j in client.list_jobs(queue="compress")] == [job.id]

    for token in (queue_service.token("admin", namespace="acme"), queue_service.token("write")):
        with pytest.raises(PermissionDenied):
            queue_service.client(token).list_jobs()
        with pytest.raises(PermissionDenied):
            queue_service.client(token).cancel_job(job.id)

    assert client.cancel_job(job.id).status == "cancelled"
    assert client.resolve(ref).status == "failed"
    with pytest.raises(InvalidRequest, match="only waiting jobs are cancelled"):
        client.cancel_job(job.id)
    again = client.retry_job(job.id)
    assert (again.status, again.version_status) == ("todo", "pending")
    with pytest.raises(NotFound):
        client.retry_job(10**9)
    with queue_service.http(queue_service.admin) as http:
        _status(http.get("/v1/jobs", params={"status": "stuck"}), 422, "validation-error")
        _status(http.post("/v1/jobs/0/retry"), 422, "validation-error")
        _status(http.post("/v1/jobs/999999999/cancel"), 404, "not-found")
