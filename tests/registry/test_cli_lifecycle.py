"""`adapters rm | retain | gc | label | alias history | alias protect` and the lineage options of
push, show and ls, run in-process against both backends."""

from __future__ import annotations

import json

import pytest

from tests.factories import make_adapter


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-lifecycle")
    return [make_adapter(root / f"a{seed}", seed=seed) for seed in (31, 32, 33)]


def as_json(result) -> dict:
    return json.loads(result.stdout)


def test_push_labels_show_and_filter(cli, dirs):
    cli(
        "push",
        dirs[0],
        "-n",
        "acme/x",
        "-t",
        "chat",
        "--label",
        "dataset=tickets-v3",
        "--label",
        "run=a=b",
        "--base-model-revision",
        "0123abc",
    )
    cli("push", dirs[1], "-n", "acme/y", "-t", "chat", "--label", "dataset=other")

    shown = cli("show", "acme/x:1")
    assert "labels      dataset=tickets-v3, run=a=b" in shown.stdout
    assert "base rev    0123abc" in shown.stdout
    version = as_json(cli("show", "acme/x:1", "--json"))["version"]
    assert version["labels"] == {"dataset": "tickets-v3", "run": "a=b"}
    assert version["base_model_revision"] == "0123abc"

    listed = as_json(cli("ls", "--label", "dataset=tickets-v3", "--json"))["adapters"]
    assert [a["name"] for a in listed] == ["acme/x"]

    after = as_json(cli("label", "acme/x:1", "eval/accuracy=0.91", "--rm", "dataset", "--json"))
    assert after == {"ref": "acme/x:1", "labels": {"eval/accuracy": "0.91", "run": "a=b"}}
    assert as_json(cli("ls", "--label", "dataset=tickets-v3", "--json"))["adapters"] == []

    bad = cli("label", "acme/x:1", "no-equals-sign", code=1)
    assert "expected key=value" in bad.stderr
    bad = cli("push", dirs[2], "-n", "acme/x", "--label", "Bad=1", code=1)
    assert "invalid label key" in bad.stderr
    assert len(as_json(cli("show", "acme/x", "--json"))["versions"]) == 1


def test_rm_retain_gc_and_alias_history(cli, dirs):
    for path in dirs:
        cli("push", path, "-n", "acme/x", "-t", "chat")
    cli("alias", "set", "acme/x:1", "prod")
    cli("alias", "set", "acme/x:2", "prod")

    refused = cli("rm", "acme/x:2", code=1)
    assert "alias prod points to" in refused.stderr
    assert as_json(cli("rm", "acme/x:1", "--json"))["versions"] == [1]

    retained = as_json(cli("retain", "acme/x", "--keep", "1", "--json"))
    assert retained["versions"] == []  # 2 is aliased, 3 is the newest
    assert [v["number"] for v in as_json(cli("show", "acme/x", "--json"))["versions"]] == [2, 3]
    cli("retain", "acme/x", "--keep", "2", "--save")
    assert "retention   the newest 2 versions, and aliased" in cli("show", "acme/x").stdout
    assert as_json(cli("retain", "acme/x", "--off", "--json"))["keep"] is None
    assert "retention" not in cli("show", "acme/x").stdout

    history = as_json(cli("alias", "history", "acme/x", "prod", "--json"))["events"]
    assert [(e["from_version"], e["to_version"]) for e in history] == [(None, 1), (1, 2)]
    assert all(e["actor"] for e in history)
    assert "FROM" in cli("alias", "history", "acme/x").stdout

    protected = as_json(cli("alias", "protect", "acme/x", "prod", "--json"))
    assert protected["protected"] is True
    cli("alias", "unprotect", "acme/x", "prod")

    cli("rm", "acme/x", code=1)
    deleted = as_json(cli("rm", "acme/x", "--force", "--json"))
    assert deleted["adapter_deleted"] and deleted["versions"] == [2, 3]

    kept = as_json(cli("gc", "--json"))  # default grace: a day
    assert kept["blobs"] == []
    dry = as_json(cli("gc", "--grace", "0", "--dry-run", "--json"))
    assert len(dry["blobs"]) == 3 and dry["dry_run"]
    done = as_json(cli("gc", "--grace", "0", "--json"))
    assert sorted(done["blobs"]) == sorted(dry["blobs"])
    assert as_json(cli("gc", "--grace", "0", "--json"))["blobs"] == []


def test_every_new_command_has_help_with_an_example(cli):
    for command in (["rm"], ["retain"], ["gc"], ["label"], ["alias", "history"], ["alias", "protect"]):
        assert "Example" in cli(*command, "--help").stdout
