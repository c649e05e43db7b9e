"""The `adapters` command line on both backends: JSON and text output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adapters.cli import COMMANDS, main
from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry.settings import reset_settings
from tests.registry import codecs  # noqa: F401 - registers the test-gate codec


def as_json(result) -> dict:
    return json.loads(result.stdout)


def test_push_pull_list_show_as_json(cli, adapter_dir, other_adapter_dir, tmp_path):
    pushed = as_json(
        cli(
            "push",
            adapter_dir,
            "--name",
            "acme/support-en",
            "--task",
            "support",
            "--tag",
            "en",
            "-a",
            "prod",
            "--json",
        )
    )
    assert pushed["created"] is True
    assert pushed["version"]["ref"] == "acme/support-en:1"
    assert pushed["version"]["status"] == "ready"
    assert pushed["version"]["aliases"] == ["prod"]
    again = as_json(cli("push", adapter_dir, "-n", "acme/support-en", "--json"))
    assert (again["created"], again["version"]["number"]) == (False, 1)
    as_json(cli("push", other_adapter_dir, "-n", "acme/support-en", "--json"))

    listed = as_json(cli("ls", "--task", "support", "--json"))["adapters"]
    assert [(a["name"], a["latest"], a["versions"], a["aliases"]) for a in listed] == [
        ("acme/support-en", 2, 2, {"prod": 1})
    ]
    assert as_json(cli("ls", "--task", "other", "--json")) == {"adapters": []}

    shown = as_json(cli("show", "acme/support-en@prod", "--json"))
    assert shown["version"]["number"] == 1
    assert [v["number"] for v in shown["versions"]] == [1, 2]

    pulled = as_json(cli("pull", "acme/support-en@prod", "-o", tmp_path / "out", "--json"))
    assert pulled["files"] == [CONFIG_FILE, SAFETENSORS_FILE]
    original, back = load_file(adapter_dir / SAFETENSORS_FILE), load_file(tmp_path / "out" / SAFETENSORS_FILE)
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)


def test_text_output(cli, adapter_dir, other_adapter_dir, tmp_path):
    out = cli("push", adapter_dir, "-n", "acme/x", "-t", "support", "-a", "prod").stdout
    assert out.startswith("pushed acme/x:1: ready, codec raw, ")
    assert "aliases: prod" in out
    assert "already holds this content" in cli("push", adapter_dir, "-n", "acme/x").stdout
    cli("push", other_adapter_dir, "-n", "acme/x")
    lines = cli("ls").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "BASE", "MODEL", "LATEST", "VERSIONS", "ALIASES", "TAGS"]
    assert lines[1].split()[:6] == ["acme/x", "support", "-", "2", "2", "prod=1"]
    show = cli("show", "acme/x").stdout
    assert "version     acme/x:2" in show and "status      ready" in show
    assert cli("alias", "set", "acme/x", "prod").stdout.strip() == "acme/x@prod -> 2 (was 1)"
    assert cli("alias", "rm", "acme/x", "prod").stdout.strip() == "removed acme/x@prod (was 2)"
    assert cli("yank", "acme/x:2", "--reason", "bad eval").stdout.strip() == "yanked acme/x:2"
    assert "acme/x:1 into" in cli("pull", "acme/x", "-o", tmp_path / "latest").stdout
    explicit = cli("pull", "acme/x:2", "-o", tmp_path / "yanked")
    assert "warning: acme/x:2 is yanked: bad eval" in explicit.stderr
    assert cli("yank", "acme/x:2", "--undo").stdout.strip() == "un-yanked acme/x:2"
    assert "no adapters" in cli("ls", "--tag", "nothing").stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["push", "{missing}", "-n", "acme/x", "-t", "t"], 2, "does not exist"),
        (["push", "{adapter}", "-n", "Acme/x", "-t", "t"], 1, "Error: invalid namespace 'Acme'"),
        (["push", "{adapter}", "-n", "acme/x", "-t", "t", "--param", "r"], 2, "'r' is not KEY=VALUE"),
        (["push", "{adapter}", "-n", "acme/x", "--codec", "zip"], 1, "Error: codec 'zip'"),
        (["push", "{broken}", "-n", "acme/x", "-t", "t"], 1, "Error: {broken}: missing adapter_config.json"),
        (["pull", "acme/x:9", "-o", "{out}"], 1, "Error: acme/x has no version 9 (the highest is 1)"),
        (["pull", "acme/x:zero", "-o", "{out}"], 1, "Error: invalid ref 'acme/x:zero'"),
        (["pull", "acme/x"], 2, "Missing option '--output'"),
        (["show", "nobody/x"], 1, "Error: adapter nobody/x not found"),
        (["alias", "set", "acme/x:1", "latest"], 1, "Error: alias 'latest' is reserved"),
        (["alias", "rm", "acme/x", "canary"], 1, "Error: acme/x has no alias 'canary'"),
        (["yank", "acme/x@nope"], 1, "Error: acme/x has no alias 'nope'"),
    ],
)
def test_failures_exit_non_zero_with_one_line(cli, adapter_dir, tmp_path, args, code, message):
    cli("push", adapter_dir, "-n", "acme/x", "-t", "t")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / SAFETENSORS_FILE).write_bytes((adapter_dir / SAFETENSORS_FILE).read_bytes())
    paths = {
        "missing": tmp_path / "missing",
        "adapter": adapter_dir,
        "broken": broken,
        "out": tmp_path / "out",
    }
    result = cli(*[a.format(**paths) for a in args], code=code)
    assert message.format(**paths) in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()
    assert as_json(cli("show", "acme/x", "--json"))["adapter"]["versions"] == 1


def test_a_rejected_push_exits_non_zero_after_printing_it(cli, adapter_dir):
    result = cli(
        "push", adapter_dir, "-n", "acme/x", "-t", "t", "--codec", "test-gate", "--param", "passes=false",
        "--on-gate-fail", "reject", "--json", code=1,
    )  # fmt: skip
    assert as_json(result)["version"]["status"] == "rejected"
    assert "Error: acme/x:1 is rejected: missed the fidelity gate" in result.stderr


def test_a_server_database_is_migrated_with_db_upgrade(fresh_pg_url, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERS_DATABASE_URL", fresh_pg_url)
    monkeypatch.setenv("ADAPTERS_STORAGE_URL", str(tmp_path / "blobs"))
    reset_settings()
    runner = CliRunner()
    try:
        refused = runner.invoke(main, ["ls"])
        assert refused.exit_code == 1
        assert "run `adapters db upgrade`" in refused.stderr
        before = json.loads(runner.invoke(main, ["db", "current", "--json"]).stdout)
        assert before["revision"] is None and before["head"]
        upgraded = runner.invoke(main, ["db", "upgrade", "--json"])
        assert upgraded.exit_code == 0
        assert json.loads(upgraded.stdout)["revision"] == before["head"]
        assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0  # again: nothing to do
        assert runner.invoke(main, ["ls", "--json"]).stdout.strip().startswith("{")
    finally:
        reset_settings()


def _all_commands():
    for name in sorted(COMMANDS):
        command = main.get_command(None, name)
        yield [name]
        for sub in getattr(command, "commands", {}):
            yield [name, sub]


@pytest.mark.parametrize("argv", list(_all_commands()), ids=" ".join)
def test_every_command_has_help_with_an_example(argv):
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_listing_does_not_load_torch(tmp_path):
    code = (
        "import sys\n"
        "from adapters.cli import main\n"
        "try:\n"
        "    main(['ls', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {
        **os.environ,
        "ADAPTERS_HOME": str(tmp_path),
        "ADAPTERS_DATABASE_URL": "",
        "ADAPTERS_STORAGE_URL": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"adapters": []}
