"""Tokens over HTTP: scopes and namespaces on every kind of route, revocation, anonymous reads where
allowed, and secrets that never reach the logs."""

from __future__ import annotations

import logging

import pytest

from adapters.registry.errors import AuthenticationRequired, InvalidToken, PermissionDenied
from adapters.registry.logs import JsonFormatter
from tests.api.conftest import running_service
from tests.factories import adapter_variants


@pytest.fixture(scope="module")
def seeded(service, adapter_dir, tmp_path_factory):
    dirs = adapter_variants(adapter_dir, tmp_path_factory.mktemp("variants"), 4)
    service.client().push(dirs[0], "acme/x", task="t", aliases=["prod"])
    service.client().push(dirs[1], "other/y", task="t")
    return dirs


def _status(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_read_tokens_read_and_nothing_more(service, seeded, tmp_path):
    reader = service.token("read")
    client = service.client(reader)
    assert [a.name for a in client.list()] == ["acme/x", "other/y"]
    client.pull("acme/x", tmp_path / "out")
    with pytest.raises(PermissionDenied, match="scope read; the operation needs write"):
        client.push(seeded[2], "acme/x")
    with pytest.raises(PermissionDenied):
        client.set_alias("acme/x:1", "canary")
    with pytest.raises(PermissionDenied):
        client.yank("acme/x:1")
    with pytest.raises(PermissionDenied):
        client.list_tokens()
    assert service.registry.resolve("acme/x:1").aliases == ["prod"]


def test_namespace_tokens_act_only_in_their_namespace(service, seeded, tmp_path):
    writer = service.token("write", namespace="acme")
    client = service.client(writer)
    assert [a.name for a in client.list()] == ["acme/x"]  # lookups are narrowed to the namespace
    with service.http(writer) as http:
        _status(http.get("/v1/adapters", params={"namespace": "other"}), 403, "forbidden")
        _status(http.get("/v1/adapters/other/y"), 403, "forbidden")
        _status(http.get("/v1/adapters/other/missing"), 403, "forbidden")  # no existence leak
        _status(http.get("/v1/resolve", params={"ref": "other/y"}), 403, "forbidden")
        _status(http.get("/v1/adapters/other/y/versions/1/files/adapter_config.json"), 403, "forbidden")
        _status(http.put("/v1/adapters/other/y/aliases/a", json={"version": 1}), 403, "forbidden")
        _status(http.post("/v1/adapters/other/y/versions/1/yank"), 403, "forbidden")
    with pytest.raises(PermissionDenied, match="limited to namespace 'acme'"):
        client.push(seeded[2], "other/y")
    assert client.push(seeded[2], "acme/x").version.number == 2
    with pytest.raises(PermissionDenied):
        client.pull("other/y", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert service.registry.adapter("other/y").versions == 1


def test_namespace_admins_manage_only_their_tokens(service, seeded):
    acme_admin = service.client(service.token("admin", namespace="acme", name="acme-admin"))
    made = acme_admin.create_token("deploy", "read", namespace="acme")
    assert made.token.namespace == "acme"
    with pytest.raises(PermissionDenied):
        acme_admin.create_token("everywhere", "read")
    with pytest.raises(PermissionDenied):
        acme_admin.create_token("theirs", "read", namespace="other")
    assert {t.namespace for t in acme_admin.list_tokens()} == {"acme"}
    other = service.registry.create_token("theirs", "read", namespace="other").token
    with pytest.raises(Exception, match="no token"):
        acme_admin.revoke_token(other.id)


def test_revoked_expired_unknown_and_malformed_tokens_are_refused(service, seeded):
    made = service.client().create_token("short-lived", "read")
    client = service.client(made.secret)
    assert client.list()
    service.client().revoke_token(made.token.id)
    with pytest.raises(InvalidToken, match="unknown, revoked or expired"):
        client.list()
    with pytest.raises(InvalidToken):
        service.client("adp_0123456789ab_forged").list()
    with service.http() as http:
        for header in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-token", "Token abc"):
            response = http.get("/v1/adapters", headers={"Authorization": header})
            _status(response, 401, "invalid-token")
            assert response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(AuthenticationRequired, match="needs a token"):
        service.client("").list()


def test_anonymous_reads_only_where_allowed(pg_url, s3_endpoint, tmp_path, adapter_dir):
    with running_service(pg_url, s3_endpoint, tmp_path / "home", allow_anonymous_read=True) as open_service:
        open_service.client().push(adapter_dir, "acme/x", task="t")
        anonymous = open_service.client("")
        assert [a.name for a in anonymous.list()] == ["acme/x"]
        anonymous.pull("acme/x", tmp_path / "out")
        with pytest.raises(AuthenticationRequired):
            anonymous.push(adapter_dir, "acme/y", task="t")
        with pytest.raises(AuthenticationRequired):
            anonymous.list_tokens()


def test_secrets_never_reach_the_logs(service, seeded, caplog, tmp_path):
    made = service.client().create_token("logged", "write")
    caplog.set_level(logging.DEBUG)
    client = service.client(made.secret)
    client.list()
    client.push(seeded[3], "acme/logs", task="t")
    client.pull("acme/logs", tmp_path / "out")
    with service.http(made.secret) as http:
        http.get("/v1/adapters/nobody/x")
        http.get("/v1/adapters", headers={"Authorization": f"Bearer {made.secret}x"})
    lines = [JsonFormatter().format(record) for record in caplog.records]
    access = [line for line in lines if '"logger": "adapters.access"' in line]
    assert len(access) >= 5
    assert any(
        f'"token_id": "{made.token.id}"' in line and '"caller": "token:logged"' in line for line in access
    )
    secret_part = made.secret[len(f"adp_{made.token.id}_") :]  # the random part (it may hold "_" too)
    assert len(secret_part) >= 40
    assert not [line for line in lines if secret_part in line or service.admin in line]
