"""Losing the database: sessions the server ends (`pg_terminate_backend`) cost no request, an outage
answers 503 `service-unavailable` with Retry-After (never 500), the service recovers by itself, and
the CLI retries idempotent calls with backoff before giving one readable line."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from adapters.cli import main
from adapters.registry.errors import ServiceUnavailable
from adapters.registry.settings import reset_settings
from tests.api.conftest import running_service
from tests.factories import adapter_variants
from tests.proxy import TcpProxy

APP = "adapters-outage-test"
PROBLEM = "application/problem+json"


def _backends(pg_url: str) -> list[int]:
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with admin.connect() as conn:
        pids = conn.scalars(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :app"), {"app": APP}
        ).all()
    admin.dispose()
    return list(pids)


def _terminate(pg_url: str, *, wait: bool) -> int:
    """End every session of the service's pool, as a superuser would; with `wait`, until they are gone."""
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with admin.connect() as conn:
        ended = conn.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :app"
            ),
            {"app": APP},
        )
    admin.dispose()
    deadline = time.monotonic() + 10
    while wait and _backends(pg_url):
        assert time.monotonic() < deadline, "the sessions did not end"
        time.sleep(0.02)
    return int(ended)


@pytest.fixture
def named_service(pg_url, s3_endpoint, tmp_path):
    """An API whose database sessions carry an application name, so a test can end just those."""
    with running_service(pg_url, s3_endpoint, tmp_path / "home", route=_with_app) as service:
        yield service


def _with_app(url: str) -> str:
    return sa.make_url(url).update_query_dict({"application_name": APP}).render_as_string(False)


@pytest.mark.parametrize("wait", [True, False], ids=["after-they-ended", "at-once"])
def test_terminated_sessions_fail_no_request(named_service, pg_url, adapter_dir, tmp_path, wait):
    service = named_service
    client = service.client()
    client.push(adapter_dir, "acme/x", task="t")
    with service.http(service.admin) as http, ThreadPoolExecutor(8) as pool:

        def get(_: int) -> int:
            return http.get("/v1/adapters/acme/x/versions/1").status_code

        assert set(pool.map(get, range(32))) == {200}  # the pool now holds several sessions
        assert len(_backends(pg_url)) >= 2
        assert _terminate(pg_url, wait=wait) >= 2
        assert set(pool.map(get, range(32))) == {200}
        assert http.get("/v1/adapters", params={"task": "t"}).status_code == 200
        if wait:  # the server closed them: writes get live sessions too
            _terminate(pg_url, wait=True)
            assert http.put("/v1/adapters/acme/x/aliases/prod", json={"version": 1}).status_code == 200
            other = adapter_variants(adapter_dir, tmp_path, 2)[1]
            assert client.push(other, "acme/x").version.number == 2


@pytest.fixture
def proxied_service(pg_url, s3_endpoint, tmp_path):
    """An API that reaches PostgreSQL through a proxy the test can cut (the database host is gone)."""
    target = sa.make_url(pg_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()

    def through_proxy(url: str) -> str:
        return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)

    try:
        with running_service(
            pg_url, s3_endpoint, tmp_path / "home", route=through_proxy, retry_after_seconds=1
        ) as service:
            yield service, proxy
    finally:
        proxy.stop()


def _unavailable(response) -> dict:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["type"] == "https://adapters.dev/problems/service-unavailable"
    assert body["detail"].startswith("the database is unavailable")
    return body


def test_a_database_outage_is_503_with_retry_after_and_the_service_recovers(
    proxied_service, adapter_dir, tmp_path
):
    service, proxy = proxied_service
    client = service.client()
    client.push(adapter_dir, "acme/x", task="t")
    other = adapter_variants(adapter_dir, tmp_path, 2)[1]
    with service.http(service.admin) as http:
        assert http.get("/v1/adapters/acme/x/versions/1").status_code == 200
        proxy.stop()  # pooled sessions end and new connections are refused
        _unavailable(http.get("/v1/adapters/acme/x/versions/1"))
        _unavailable(http.get("/v1/adapters", params={"task": "t"}))
        _unavailable(http.put("/v1/adapters/acme/x/aliases/prod", json={"version": 1}))
        with pytest.raises(ServiceUnavailable, match="the database is unavailable"):
            service.client().push(other, "acme/x")  # an upload: answered 503 too
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        proxy.start()  # the database is back
        assert http.get("/v1/adapters/acme/x/versions/1").status_code == 200
        assert http.put("/v1/adapters/acme/x/aliases/prod", json={"version": 1}).status_code == 200
        assert http.get("/readyz").status_code == 200
    assert client.push(other, "acme/x").version.number == 2


def _count_503(service) -> float:
    with service.http() as http:
        metrics = http.get("/metrics").text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("adapters_http_requests_total{")
        and 'status="503"' in line
        and "/metrics" not in line
    )


def test_the_cli_retries_idempotent_calls_then_gives_one_line(proxied_service, monkeypatch, tmp_path):
    service, proxy = proxied_service
    proxy.stop()
    before = _count_503(service)
    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("ADAPTERS_URL", service.url)
    monkeypatch.setenv("ADAPTERS_TOKEN", service.admin)
    monkeypatch.setenv("ADAPTERS_CLIENT_RETRIES", "2")
    reset_settings()
    try:
        started = time.monotonic()
        result = CliRunner().invoke(main, ["ls", "--task", "t"])
        took = time.monotonic() - started
    finally:
        reset_settings()
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: the database is unavailable") and lines[0].endswith("(tried 3 times)")
    assert _count_503(service) - before == 3  # the first try and two retries
    assert took >= 2  # it waited the server's Retry-After (1 s) between tries


def test_the_cli_rides_out_a_short_outage(proxied_service, adapter_dir):
    service, proxy = proxied_service
    service.client().push(adapter_dir, "acme/x", task="t")
    client = service.client()
    client.retries = 6
    for call in (
        lambda: client.resolve("acme/x:1").status,
        lambda: client.set_alias("acme/x:1", "prod").version,
    ):
        proxy.stop()
        threading.Timer(1.5, proxy.start).start()  # back while the client is retrying
        assert call() in ("ready", 1)  # a read, then an idempotent write


def test_the_cli_on_an_unreachable_database_says_so_in_one_line(monkeypatch, tmp_path):
    from tests.conftest import free_port

    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERS_DATABASE_URL", f"postgresql://127.0.0.1:{free_port()}/registry")
    monkeypatch.setenv("ADAPTERS_STORAGE_URL", str(tmp_path / "blobs"))
    reset_settings()
    try:
        result = CliRunner().invoke(main, ["ls"])
    finally:
        reset_settings()
    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: the database is unavailable: Connection refused\n"
