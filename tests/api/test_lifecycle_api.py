"""Lifecycle and lineage over HTTP (PostgreSQL + S3 behind a real server): admin-only deletion with
problem+json refusals, retention, alias history with the token's name, protected aliases, labels on
push and as a list filter, and garbage collection of what the API deleted."""

from __future__ import annotations

import pytest

from adapters.registry.errors import AliasProtected, PermissionDenied, VersionAliased
from tests.factories import adapter_variants

PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def dirs(adapter_dir, tmp_path_factory):
    return adapter_variants(adapter_dir, tmp_path_factory.mktemp("variants"), 4)


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["type"] == f"https://adapters.dev/problems/{code}" and body["code"] == code
    return body


def test_deletion_is_an_admins_and_spares_aliased_versions_unless_forced(service, dirs):
    admin = service.client()
    for path in dirs[:3]:
        admin.push(path, "del/x", task="t")
    admin.set_alias("del/x:1", "prod")
    writer = service.token("write", name="ci")

    with service.http(writer) as http:
        _problem(http.delete("/v1/adapters/del/x/versions/2"), 403, "forbidden")
        _problem(http.delete("/v1/adapters/del/x"), 403, "forbidden")
    with service.http(service.admin) as http:
        body = _problem(http.delete("/v1/adapters/del/x/versions/1"), 409, "version-aliased")
        assert "prod" in body["detail"]
        _problem(http.delete("/v1/adapters/del/x"), 409, "version-aliased")
        _problem(http.delete("/v1/adapters/del/x/versions/9"), 404, "version-not-found")
        gone = http.delete("/v1/adapters/del/x/versions/2")
        assert gone.status_code == 200 and gone.json()["versions"] == [2]
    with pytest.raises(VersionAliased):
        admin.delete("del/x@prod")
    assert admin.delete("del/x@prod", force=True).aliases == ["prod"]
    assert [v.number for v in admin.versions("del/x")] == [3]
    # The forced removal is in the history under the admin token's name.
    [_created, removed] = admin.alias_history("del/x", "prod").events
    assert (removed.from_version, removed.to_version, removed.actor) == (1, None, "token:admin")

    deleted = admin.delete("del/x")
    assert deleted.adapter_deleted and deleted.versions == [3]
    with service.http(service.admin) as http:
        _problem(http.get("/v1/adapters/del/x"), 404, "adapter-not-found")


def test_retention_over_the_api_keeps_aliased_versions(service, dirs):
    admin = service.client()
    for path in dirs:
        admin.push(path, "ret/x", task="t")
    admin.set_alias("ret/x:1", "prod")
    with pytest.raises(PermissionDenied):
        service.client(service.token("write")).retain("ret/x", 1)
    assert admin.retain("ret/x", 2, save=True).versions == [2]
    assert [v.number for v in admin.versions("ret/x")] == [1, 3, 4]
    admin.delete("ret/x:4")
    admin.push(dirs[1], "ret/x", task="t")  # version 5; the saved setting keeps 2 of them
    assert [v.number for v in admin.versions("ret/x")] == [1, 3, 5]
    admin.clear_retention("ret/x")


def test_alias_history_names_the_token_and_protected_aliases_refuse_non_admins(service, dirs):
    admin = service.client()
    admin.push(dirs[0], "prot/x", task="t")
    admin.push(dirs[1], "prot/x", task="t")
    writer = service.client(service.token("write", name="deployer"))
    writer.set_alias("prot/x:1", "prod")
    writer.set_alias("prot/x:2", "prod")

    with pytest.raises(PermissionDenied):
        writer.protect_alias("prot/x", "prod")
    assert admin.protect_alias("prot/x", "prod").protected
    with service.http(service.token("write", name="deployer")) as http:
        body = _problem(
            http.put("/v1/adapters/prot/x/aliases/prod", json={"version": 1}), 403, "alias-protected"
        )
        assert "only an admin" in body["detail"]
        _problem(http.delete("/v1/adapters/prot/x/aliases/prod"), 403, "alias-protected")
    with pytest.raises(AliasProtected):
        writer.push(dirs[2], "prot/x", aliases=["prod"])  # a push may not move it either
    assert [v.number for v in admin.versions("prot/x")] == [1, 2]
    admin.set_alias("prot/x:1", "prod")  # an admin may

    events = admin.alias_history("prot/x").events
    assert [(e.from_version, e.to_version, e.actor) for e in events] == [
        (None, 1, "token:deployer"),
        (1, 2, "token:deployer"),
        (2, 1, "token:admin"),
    ]
    with service.http(service.token("read")) as http:
        listed = http.get("/v1/adapters/prot/x/alias-history", params={"alias": "prod"})
        assert listed.status_code == 200 and len(listed.json()["events"]) == 3
    admin.protect_alias("prot/x", "prod", False)
    writer.set_alias("prot/x:2", "prod")


def test_labels_on_push_update_and_filter(service, dirs):
    writer = service.client(service.token("write"))
    pushed = writer.push(dirs[0], "lab/x", task="t", labels={"dataset": "d1"}, base_model_revision="rev1")
    assert pushed.version.labels == {"dataset": "d1"} and pushed.version.base_model_revision == "rev1"
    writer.push(dirs[1], "lab/y", task="t", labels={"dataset": "d2"})

    assert [a.name for a in writer.list(labels={"dataset": "d1"})] == ["lab/x"]
    with service.http(service.admin) as http:
        found = http.get("/v1/adapters", params=[("label", "dataset:d2")]).json()["adapters"]
        assert [a["name"] for a in found] == ["lab/y"]
        _problem(http.get("/v1/adapters", params={"label": "Bad Key:1"}), 400, "invalid-request")
        _problem(
            http.patch("/v1/adapters/lab/x/versions/1/labels", json={"set": {"BAD": "x"}}),
            400,
            "invalid-request",
        )
    assert writer.label("lab/x:1", {"eval/acc": "0.9"}, ["dataset"]).labels == {"eval/acc": "0.9"}
    assert writer.resolve("lab/x:1").labels == {"eval/acc": "0.9"}
    assert writer.list(labels={"dataset": "d1"}) == []


def test_what_the_api_deleted_is_collected_after_the_grace_period(fresh_service, dirs):
    admin = fresh_service.client()
    admin.push(dirs[0], "gc/x", task="t")
    admin.push(dirs[1], "gc/x", task="t")
    before = fresh_service.stored_keys()
    assert len(before) == 2
    admin.delete("gc/x")
    assert fresh_service.registry.collect_garbage(grace_seconds=3600).blobs == []
    assert fresh_service.stored_keys() == before
    assert len(fresh_service.registry.collect_garbage(grace_seconds=0).blobs) == 2
    assert fresh_service.stored_keys() == []


def test_the_lifecycle_commands_through_the_api(fresh_service, dirs, tmp_path, monkeypatch):
    import json

    from tests.api.test_cli_remote import _runner

    env = {"ADAPTERS_URL": fresh_service.url, "ADAPTERS_TOKEN": fresh_service.admin}
    run = _runner(monkeypatch, tmp_path / "home", env)
    for path in dirs[:3]:
        run("push", path, "-n", "cli/x", "-t", "t", "--label", "dataset=d1", "--base-model-revision", "r1")
    assert "labels      dataset=d1" in run("show", "cli/x:1").stdout
    assert [
        a["name"] for a in json.loads(run("ls", "--label", "dataset=d1", "--json").stdout)["adapters"]
    ] == ["cli/x"]
    run("label", "cli/x:1", "eval/acc=0.9", "--rm", "dataset")
    assert json.loads(run("show", "cli/x:1", "--json").stdout)["version"]["labels"] == {"eval/acc": "0.9"}

    run("alias", "set", "cli/x:1", "prod")
    run("alias", "protect", "cli/x", "prod")
    writer = _runner(monkeypatch, tmp_path / "home", env | {"ADAPTERS_TOKEN": fresh_service.token("write")})
    assert "protected" in writer("alias", "set", "cli/x:2", "prod", code=1).stderr
    assert "the operation needs admin" in writer("rm", "cli/x:2", code=1).stderr
    history = json.loads(run("alias", "history", "cli/x", "prod", "--json").stdout)["events"]
    assert [(e["from_version"], e["to_version"], e["actor"]) for e in history] == [(None, 1, "token:admin")]

    assert "points to" in run("rm", "cli/x:1", code=1).stderr
    assert json.loads(run("retain", "cli/x", "--keep", "1", "--json").stdout)["versions"] == [2]
    assert json.loads(run("rm", "cli/x", "--force", "--json").stdout)["versions"] == [1, 3]
    assert "works on the database directly" in run("gc", code=1).stderr
