"""The embedded CLI (and the CLI on PostgreSQL + S3) on input past the limits: one line on stderr,
exit status 1, nothing stored."""

from __future__ import annotations

import json
import shutil

import pytest

from adapters.compress.peft_io import CONFIG_FILE
from tests.registry.test_cli import as_json


def _config_text(adapter_dir, tmp_path, edit) -> str:
    out = tmp_path / "adapter"
    shutil.copytree(adapter_dir, out)
    text = (out / CONFIG_FILE).read_text()
    (out / CONFIG_FILE).write_text(edit(text))
    return str(out)


def _field(name: str, value: str):
    return lambda text: text.rstrip().rstrip("}") + f', "{name}": {value}}}'


def _huge_r(text: str) -> str:
    return json.dumps(json.loads(text) | {"r": 0}).replace('"r": 0', '"r": ' + "7" * 5000)


DEEP = "[" * 100_000 + "]" * 100_000
CASES = {
    "config nested 100k deep": (_field("x", DEEP), "nested more than 32 levels"),
    "r with 5,000 digits": (_huge_r, "more than 20 digits"),
    "rank_pattern {'(': 8}": (_field("rank_pattern", '{"(": 8}'), "pattern '(' is not a valid regular"),
    "rank_pattern backreference": (_field("rank_pattern", '{"(a)\\\\1": 8}'), "backreferences"),
    "target_modules: 5": (_field("target_modules", "5"), "config field target_modules must be"),
    "base model of 10k characters": (
        _field("base_model_name_or_path", '"' + "m" * 10_000 + '"'),
        "base_model_name_or_path is 10000 bytes long",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configs_are_one_line_and_store_nothing(cli, adapter_dir, tmp_path, case):
    edit, message = CASES[case]
    path = _config_text(adapter_dir, tmp_path, edit)
    result = cli("push", path, "-n", "acme/x", "-t", "t", code=1)
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert as_json(cli("ls", "--json")) == {"adapters": []}


def test_options_past_the_limits_are_one_line(cli, adapter_dir):
    for args, message in [
        (["--base-model", "m" * 2049], "the base model name is 2049 bytes long, more than the limit of 2048"),
        (
            ["--description", "d" * 4097],
            "the description is 4097 characters long, more than the limit of 4096",
        ),
    ]:
        result = cli("push", adapter_dir, "-n", "acme/x", "-t", "t", *args, code=1)
        assert result.stderr.startswith(f"Error: {message}")
        assert len(result.stderr.strip().splitlines()) == 1
    assert as_json(cli("ls", "--json")) == {"adapters": []}
    cli("push", adapter_dir, "-n", "acme/x", "-t", "t", "--base-model", "m" * 2048)
    result = cli("yank", "acme/x:1", "--reason", "r" * 1001, code=1)
    assert (
        result.stderr.strip() == "Error: the yank reason is 1001 characters long, more than the limit of 1000"
    )
    assert as_json(cli("show", "acme/x:1", "--json"))["version"]["yanked"] is False
