"""Every CLI command against the API (ADAPTERS_URL + ADAPTERS_TOKEN) behaves as it does embedded: the
registry CLI tests run again here, unchanged, against a served registry."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from adapters.cli import main
from adapters.registry.settings import reset_settings
from adapters.registry.worker import Worker
from tests.api.conftest import running_service
from tests.registry import codecs  # noqa: F401 - registers the test-gate codec (the server runs in-process)
from tests.registry.test_cli import (  # noqa: F401 - collected again here, against the API
    as_json,
    test_a_rejected_push_exits_non_zero_after_printing_it,
    test_failures_exit_non_zero_with_one_line,
    test_push_pull_list_show_as_json,
    test_text_output,
)


def _runner(monkeypatch, home, env: dict[str, str]):
    """A CLI runner with its own environment (applied on every call, so runners can alternate)."""

    def run(*args, code: int = 0):
        monkeypatch.setenv("ADAPTERS_HOME", str(home))
        for key in ("ADAPTERS_DATABASE_URL", "ADAPTERS_STORAGE_URL", "ADAPTERS_URL", "ADAPTERS_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_settings()
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return run


@pytest.fixture
def cli(fresh_service, tmp_path, monkeypatch):
    """`adapters ...` in-process, talking to a fresh served registry with an admin token."""
    yield _runner(
        monkeypatch,
        tmp_path / "cli-home",
        {"ADAPTERS_URL": fresh_service.url, "ADAPTERS_TOKEN": fresh_service.admin},
    )
    reset_settings()


VOLATILE = {"created_at", "updated_at", "processed_at", "yanked_at", "created_by", "path", "worker"}


def _shape(value):
    """The JSON with volatile values blanked: what must match between embedded and remote."""
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE else _shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def test_json_output_matches_the_embedded_registry(fresh_service, adapter_dir, tmp_path, monkeypatch):
    script = [
        ["push", adapter_dir, "-n", "acme/x", "-t", "support", "--tag", "en", "-a", "prod", "--json"],
        ["ls", "--json"],
        ["show", "acme/x@prod", "--json"],
        ["alias", "set", "acme/x:1", "canary", "--json"],
        ["yank", "acme/x:1", "--reason", "r", "--json"],
        ["yank", "acme/x:1", "--undo", "--json"],
        ["alias", "rm", "acme/x", "canary", "--json"],
        ["pull", "acme/x", "-o", "{out}", "--json"],
    ]
    outputs = {}
    envs = {
        "embedded": {},
        "remote": {"ADAPTERS_URL": fresh_service.url, "ADAPTERS_TOKEN": fresh_service.admin},
    }
    for kind, env in envs.items():
        run = _runner(monkeypatch, tmp_path / kind, env)
        outputs[kind] = [
            _shape(json.loads(run(*[str(a).format(out=tmp_path / kind / "out") for a in argv]).stdout))
            for argv in script
        ]
    reset_settings()
    assert outputs["remote"] == outputs["embedded"]


def test_push_wait_follows_the_version_to_ready(
    pg_url, s3_endpoint, tmp_path, monkeypatch, adapter_dir, other_adapter_dir
):
    with running_service(pg_url, s3_endpoint, tmp_path / "home", compression="queue") as service:
        run = _runner(
            monkeypatch, tmp_path / "cli", {"ADAPTERS_URL": service.url, "ADAPTERS_TOKEN": service.admin}
        )
        queued = run("push", adapter_dir, "-n", "acme/w", "-t", "t")
        assert queued.stdout.startswith("pushed acme/w:1: pending, codec -,")
        worker = Worker(service.settings, registry=service.registry)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            waited = run("push", other_adapter_dir, "-n", "acme/w", "--wait", "--timeout", "60")
            assert waited.stdout.startswith("pushed acme/w:2: ready, codec raw,")
            shown = waited.stderr.splitlines()  # each status seen (a fast worker may skip past pending)
            assert shown[-1] == "acme/w:2: ready" and all(x.startswith("acme/w:2: ") for x in shown)
            assert as_json(run("show", "acme/w:1", "--json"))["version"]["status"] == "ready"
            rejected = run(
                "push", adapter_dir, "-n", "acme/r", "-t", "t", "--codec", "test-gate", "--param",
                "passes=false", "--on-gate-fail", "reject", "--wait", "--json", code=1,
            )  # fmt: skip
            assert as_json(rejected)["version"]["status"] == "rejected"
            assert "Error: acme/r:1 is rejected: missed the fidelity gate" in rejected.stderr
        finally:
            worker.stopping.set()
            thread.join(30)
    reset_settings()


def test_push_wait_gives_up_after_its_timeout(pg_url, s3_endpoint, tmp_path, monkeypatch, adapter_dir):
    with running_service(pg_url, s3_endpoint, tmp_path / "home", compression="queue") as service:
        run = _runner(
            monkeypatch, tmp_path / "cli", {"ADAPTERS_URL": service.url, "ADAPTERS_TOKEN": service.admin}
        )
        result = run("push", adapter_dir, "-n", "acme/w", "-t", "t", "--wait", "--timeout", "0.5", code=1)
        assert "Error: acme/w:1 is still pending after 0.5 s" in result.stderr
    reset_settings()


def test_tokens_from_the_command_line(cli, fresh_service, adapter_dir, tmp_path, monkeypatch):
    secret = cli(
        "token", "create", "--scope", "write", "--namespace", "acme", "--name", "ci", "-q"
    ).stdout.strip()
    assert secret.startswith("adp_")
    listed = as_json(cli("token", "ls", "--json"))["tokens"]
    assert {t["name"] for t in listed} == {"admin", "ci"}
    assert all("secret" not in t and secret not in json.dumps(t) for t in listed)
    ci = next(t for t in listed if t["name"] == "ci")
    assert (ci["scope"], ci["namespace"]) == ("write", "acme")

    as_ci = _runner(
        monkeypatch, tmp_path / "ci", {"ADAPTERS_URL": fresh_service.url, "ADAPTERS_TOKEN": secret}
    )
    as_ci("push", adapter_dir, "-n", "acme/x", "-t", "t")
    denied = as_ci("push", adapter_dir, "-n", "other/x", "-t", "t", code=1)
    assert "Error: this token is limited to namespace 'acme', not namespace 'other'" in denied.stderr
    assert "needs admin" in as_ci("token", "ls", code=1).stderr

    revoked = as_json(cli("token", "revoke", ci["id"], "--json"))
    assert revoked["revoked_at"] is not None
    assert "invalid token" in as_ci("ls", code=1).stderr
    assert "no token 'nope'" in cli("token", "revoke", "nope", code=1).stderr
    reset_settings()


def test_embedded_tokens_and_server_commands_refuse_a_remote(tmp_path, monkeypatch):
    run = _runner(monkeypatch, tmp_path / "home", {})
    made = as_json(run("token", "create", "--scope", "read", "--json"))
    assert made["token"]["scope"] == "read" and made["secret"].startswith(f"adp_{made['token']['id']}_")
    assert run("token", "ls").stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "SCOPE"]
    assert "revoked token" in run("token", "revoke", made["token"]["id"]).stdout
    remote = _runner(monkeypatch, tmp_path / "home", {"ADAPTERS_URL": "http://127.0.0.1:9"})
    for argv in (["db", "upgrade"], ["db", "current"], ["worker", "--once"]):
        assert "works on the database directly" in remote(*argv, code=1).stderr
    assert "cannot reach the registry at http://127.0.0.1:9" in remote("ls", code=1).stderr
    reset_settings()


def test_serve_refuses_placeholder_secrets(tmp_path, monkeypatch):
    run = _runner(
        monkeypatch,
        tmp_path / "home",
        {"ADAPTERS_DATABASE_URL": "postgresql://registry:changeme@db/registry"},
    )
    assert (
        "refusing to start with placeholder secrets in ADAPTERS_DATABASE_URL" in run("serve", code=1).stderr
    )
    run = _runner(monkeypatch, tmp_path / "home", {"AWS_SECRET_ACCESS_KEY": "minioadmin"})
    assert "AWS_SECRET_ACCESS_KEY" in run("worker", "--once", code=1).stderr
    reset_settings()
