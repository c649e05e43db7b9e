"""One set of limits, checked before anything is stored, the same on SQLite + a folder and on
PostgreSQL + S3 over HTTP: base model names (long local paths are stored, up to 2,048 bytes),
descriptions, yank reasons, tag and alias counts, and configs the database could not hold."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from adapters.compress.peft_io import CONFIG_FILE
from adapters.registry.errors import InvalidAdapterUpload, InvalidName, InvalidRequest
from adapters.registry.limits import MAX_BASE_MODEL_BYTES
from adapters.registry.storage import LocalBlobStorage

LONG_PATH = "/home/someone/checkpoints/" + "x" * (MAX_BASE_MODEL_BYTES - 26)  # 2,048 ASCII bytes
WIDE = "\U0001d538" * (MAX_BASE_MODEL_BYTES // 4)  # 512 characters, 2,048 bytes in UTF-8


def stored_blobs(storage) -> list[str]:
    if isinstance(storage, LocalBlobStorage):
        return sorted(p.name for p in storage.root.rglob("*") if p.is_file())
    listing = storage._client.list_objects_v2(Bucket=storage.bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def nothing_stored(registry) -> bool:
    return registry.list() == [] and stored_blobs(registry.storage) == []


def with_config(adapter_dir, out, **fields):
    shutil.copytree(adapter_dir, out)
    config = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps(config | fields))
    return out


@pytest.mark.parametrize("base_model", [LONG_PATH, WIDE], ids=["2048-ascii", "512-wide-chars"])
def test_long_base_model_names_are_stored(registry, adapter_dir, tmp_path, base_model):
    source = with_config(adapter_dir, tmp_path / "a", base_model_name_or_path=base_model)
    pushed = registry.push(source, "acme/from-config", task="t")
    assert pushed.version.status == "ready"
    registry.push(adapter_dir, "acme/explicit", task="t", base_model=base_model)
    found = registry.list(base_model=base_model)
    assert [(a.name, a.base_model) for a in found] == [
        ("acme/explicit", base_model),
        ("acme/from-config", base_model),
    ]


@pytest.mark.parametrize(
    ("base_model", "problem"),
    [
        ("x" * (MAX_BASE_MODEL_BYTES + 1), "is 2049 bytes long, more than the limit of 2048"),
        ("x" * 10_000, "is 10000 bytes long"),
        ("\U0001d538" * 513, "is 2052 bytes long"),
        ("org/model\nname", "holds the control character '\\n'"),
        ("org/model\x7f", "holds the control character '\\x7f'"),
        ("org/model\x00", "holds the control character '\\x00'"),
    ],
)
def test_base_model_names_past_the_limit_store_nothing(registry, adapter_dir, tmp_path, base_model, problem):
    source = with_config(adapter_dir, tmp_path / "a", base_model_name_or_path=base_model)
    # A NUL is refused by the config's parser, before its fields are read.
    in_config = "a string holds a NUL character" if "\x00" in base_model else problem
    with pytest.raises(
        InvalidAdapterUpload, match=re.escape(f"{CONFIG_FILE}: ") + ".*" + re.escape(in_config)
    ):
        registry.push(source, "acme/x", task="t")
    with pytest.raises(InvalidName, match=re.escape(f"the base model name {problem}")):
        registry.push(adapter_dir, "acme/x", task="t", base_model=base_model)
    assert nothing_stored(registry)
    assert registry.list(base_model=base_model) == []  # a lookup by it finds nothing, and fails not


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"description": "d" * 4097}, "description is 4097 characters long, more than the limit of 4096"),
        ({"description": "one\x00two"}, "description holds the control character"),
        ({"tags": [f"t{i}" for i in range(65)]}, "65 tags are more than the limit of 64"),
        ({"aliases": [f"a{i}" for i in range(65)]}, "65 aliases are more than the limit of 64"),
        ({"base_model": " "}, "base model name is empty"),
    ],
)
def test_push_options_past_the_limits_store_nothing(registry, adapter_dir, options, message):
    with pytest.raises((InvalidRequest, InvalidName), match=message):
        registry.push(adapter_dir, "acme/x", task="t", **options)
    assert nothing_stored(registry)


def test_push_options_at_the_limits_are_kept(registry, adapter_dir):
    description = "line one\n\tline two " + "d" * 4076
    pushed = registry.push(
        adapter_dir,
        "acme/x",
        task="t",
        description=description,
        tags=[f"t{i}" for i in range(64)],
        aliases=[f"a{i}" for i in range(64)],
    )
    assert len(pushed.version.aliases) == 64
    assert registry.adapter("acme/x").description == description


def test_yank_reasons_past_the_limit_change_nothing(registry, adapter_dir):
    registry.push(adapter_dir, "acme/x", task="t")
    for reason, message in [("r" * 1001, "more than the limit of 1000"), ("bad\x00", "control character")]:
        with pytest.raises(InvalidRequest, match=f"yank reason .*{message}"):
            registry.yank("acme/x:1", reason)
        assert not registry.resolve("acme/x:1").yanked
    reason = "regressed on the eval set:\n" + "r" * 973
    assert registry.yank("acme/x:1", reason).yank_reason == reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lora_dropout": float("nan")}, "NaN is not a JSON number"),
        ({"revision": "main\x00"}, "NUL character"),
        ({"notes": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "nested more"),
    ],
)
def test_configs_the_database_cannot_hold_store_nothing(registry, adapter_dir, tmp_path, fields, message):
    # PostgreSQL's jsonb refuses NaN and NUL: these once failed after the blob was stored.
    source = with_config(adapter_dir, tmp_path / "a", **fields)
    with pytest.raises(InvalidAdapterUpload, match=message):
        registry.push(source, "acme/x", task="t")
    assert nothing_stored(registry)
