"""A version whose compression was abandoned (the process running it inline was killed, or its lease
ran out) is compressed again by the next command that touches it, which says so; a run that may
still be alive is left alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.cli import main
from adapters.registry import queue, service
from adapters.registry.client import LocalRegistry
from adapters.registry.settings import Settings, reset_settings
from tests.worker import slow_codec  # noqa: F401 - registers the test-slow codec in this process
from tests.worker.slow_codec import killed_push, runs


@pytest.fixture
def embedded(monkeypatch, tmp_path):
    home = tmp_path / "home"
    monkeypatch.setenv("ADAPTERS_HOME", str(home))
    monkeypatch.setenv("ADAPTERS_EXTRA_CODECS", "tests.worker.slow_codec")
    monkeypatch.setenv("ADAPTERS_DEVICE", "cpu")
    for key in ("ADAPTERS_DATABASE_URL", "ADAPTERS_STORAGE_URL", "ADAPTERS_URL"):
        monkeypatch.delenv(key, raising=False)
    reset_settings()
    yield home
    reset_settings()


def _status(home: Path) -> str:
    with LocalRegistry.from_settings(Settings(home=home)) as registry:
        return registry.resolve("acme/x:1").status  # a plain read: it resumes nothing


@pytest.mark.parametrize("command", ["push", "pull", "show"])
def test_a_push_killed_mid_compression_is_resumed_by_the_next_command(
    embedded, adapter_dir, tmp_path, command
):
    log, dead = killed_push(adapter_dir, embedded, tmp_path)
    assert _status(embedded) == "compressing"
    args = {
        "push": [
            *("push", adapter_dir, "--name", "acme/x", "--task", "t", "--codec", "test-slow"),
            *("--param", f"log={log}", "--param", f"release={tmp_path / 'release'}"),
        ],
        "pull": ["pull", "acme/x:1", "-o", tmp_path / "out"],
        "show": ["show", "acme/x:1"],
    }[command]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr.startswith("warning: acme/x:1 was left compressing (inline:")
    assert f":{dead}:" in result.stderr and "no longer runs): compressing it again" in result.stderr
    assert _status(embedded) == "ready"
    assert [pid for pid, _ in runs(log)] == [dead, os.getpid()]  # run again, here
    if command == "push":
        assert result.stdout.startswith("resumed acme/x:1: ready, codec test-slow")
    if command == "pull":
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors",
        ]  # fmt: skip


def _version_id(registry: LocalRegistry, ref: str) -> int:
    with registry.db.transaction() as session:
        return service.resolve(session, ref).id


def test_a_run_whose_lease_expired_elsewhere_is_resumed_and_a_live_one_is_not(
    registry, adapter_dir, tmp_path
):
    notices: list[str] = []
    registry.notify = notices.append
    registry.push(adapter_dir, "acme/x", task="t", process=False)
    version_id = _version_id(registry, "acme/x:1")
    again = registry.push(adapter_dir, "acme/x", task="t")
    assert (again.resumed, again.version.status) == (False, "pending")  # just pushed: its pusher may claim it

    queue.claim_version(registry.db, version_id, "inline:elsewhere:4242:abcdef", lease_seconds=60)
    again = registry.push(adapter_dir, "acme/x", task="t")
    assert (again.resumed, again.version.status) == (False, "compressing")  # its lease holds
    assert registry.show("acme/x:1").version.status == "compressing"
    assert notices == []

    with registry.db.transaction() as session:  # the other machine stopped renewing a while ago
        queue.QueueRepository(session).renew(
            version_id, "inline:elsewhere:4242:abcdef", queue.QueueRepository(session).now()
        )
    again = registry.push(adapter_dir, "acme/x", task="t")
    assert (again.resumed, again.version.status) == (True, "ready")
    expired = "the lease of inline:elsewhere:4242:abcdef expired"
    assert notices == [f"acme/x:1 was left compressing ({expired}): compressing it again"]
    assert again.version.attempts == 2
