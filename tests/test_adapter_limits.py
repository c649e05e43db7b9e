"""What an adapter may hold: configs that are malformed or beyond the limits, configs PEFT could not
load, and safetensors headers larger than any LoRA adapter needs. Each is one InvalidAdapter (or
InvalidArtifact) with a reason, never another exception."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from adapters.compress import stfile
from adapters.compress.errors import InvalidAdapter, InvalidArtifact, LimitExceeded
from adapters.compress.limits import MAX_CONFIG_BYTES, MAX_HEADER_BYTES, MAX_TENSORS
from adapters.compress.peft_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    read_adapter,
    write_adapter,
)
from tests.factories import make_adapter, tiny_llama


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("a") / "adapter", seed=3)


@pytest.fixture
def adapter(source, tmp_path):
    """A fresh copy of a valid adapter, to damage."""
    return write_adapter(read_adapter(source), tmp_path / "adapter")


def _config(path):
    return json.loads((path / CONFIG_FILE).read_text())


def _write_config_text(path, text: str) -> None:
    (path / CONFIG_FILE).write_text(text)


def _with(path, **fields) -> None:
    _write_config_text(path, json.dumps(_config(path) | fields))


MALFORMED = {
    # text -> the reason given
    "nested 100k deep": (lambda c: c[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested"),
    "nested past the limit": (lambda c: c[:-1] + ', "x": ' + "[" * 40 + "]" * 40 + "}", "more than 32"),
    "5,000-digit r": (lambda c: c.replace('"r": 4', '"r": ' + "9" * 5000), "more than 20 digits"),
    "NaN": (lambda c: c[:-1] + ', "lora_dropout": NaN}', "NaN is not a JSON number"),
    "Infinity": (lambda c: c.replace('"lora_alpha": 8', '"lora_alpha": Infinity'), "Infinity is not"),
    "overflowing float": (lambda c: c.replace('"lora_alpha": 8', '"lora_alpha": 1e999'), "out of range"),
    "NUL in a string": (lambda c: c[:-1] + ', "revision": "a\\u0000b"}', "NUL character"),
    "lone surrogate": (lambda c: c[:-1] + ', "revision": "\\ud800"}', "unpaired surrogate"),
    "not JSON": (lambda c: "{r: 4", "not valid JSON"),
    "invalid pattern": (lambda c: c[:-1] + ', "rank_pattern": {"(": 8}}', "not a valid regular expression"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_configs_are_one_clear_error(adapter, case):
    edit, reason = MALFORMED[case]
    _write_config_text(adapter, edit(json.dumps(_config(adapter))))
    with pytest.raises(InvalidAdapter, match=reason) as refused:
        read_adapter(adapter)
    assert str(refused.value).startswith(str(adapter))


def test_a_config_over_the_size_limit_is_refused_unread(adapter):
    text = json.dumps(_config(adapter))
    _write_config_text(adapter, text[:-1] + ', "x": "' + "y" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(InvalidAdapter, match=f"more than the limit of {MAX_CONFIG_BYTES}"):
        read_adapter(adapter)
    _write_config_text(adapter, text[:-1] + ', "x": "' + "y" * (MAX_CONFIG_BYTES - len(text) - 16) + '"}')
    assert read_adapter(adapter).config["x"].startswith("yyy")  # just under the limit: read


# Config fields with values PEFT cannot load: each is refused here (and by PEFT, checked below).
UNLOADABLE = {
    "target_modules: 5": {"target_modules": 5},
    "target_modules: [5]": {"target_modules": ["q_proj", 5]},
    "target_modules: bad regex": {"target_modules": "(q_proj"},
    "modules_to_save: a string": {"modules_to_save": "lm_head"},
    "layers_to_transform: 'x'": {"layers_to_transform": "x"},
    "task_type unknown": {"task_type": "TRANSLATION"},
    "bias unknown": {"bias": "some"},
    "lora_dropout above 1": {"lora_dropout": 1.5},
    "lora_dropout null": {"lora_dropout": None},
    "init_lora_weights: 5": {"init_lora_weights": 5},
    "rank_pattern float": {"rank_pattern": {"q_proj": 4.0}},
    "regex with layers_to_transform": {"layers_to_transform": [0], "target_modules": ".*q_proj"},
    "layers_pattern without layers_to_transform": {"layers_pattern": "layers"},
    "lora_bias with a named init": {"lora_bias": True, "init_lora_weights": "gaussian"},
}
# Not the type PEFT declares, though PEFT happens to load them: refused as well (the registry reads
# base_model_name_or_path as a string; PEFT puts modules_to_save and layers_pattern into regular
# expressions of its own, so they must be plain names).
WRONG_TYPE = {
    "exclude_modules: {}": {"exclude_modules": {"q_proj": 1}},
    "base_model_name_or_path: 5": {"base_model_name_or_path": 5},
    "modules_to_save: a pattern": {"modules_to_save": ["(a+)+b"]},
    "layers_pattern: a pattern": {"layers_pattern": "(x+)+", "layers_to_transform": [0]},
}


def _peft_loads(path) -> bool:
    try:
        PeftModel.from_pretrained(tiny_llama(3), str(path))
    except Exception:  # noqa: BLE001 - any failure means PEFT cannot load it
        return False
    return True


@pytest.mark.parametrize("case", sorted(UNLOADABLE) + sorted(WRONG_TYPE))
def test_configs_peft_cannot_load_are_refused(adapter, case):
    fields = UNLOADABLE.get(case) or WRONG_TYPE[case]
    _with(adapter, **fields)
    with pytest.raises(InvalidAdapter, match=f"^{adapter}/{CONFIG_FILE}: config field {next(iter(fields))}"):
        read_adapter(adapter)
    if case in UNLOADABLE:
        assert not _peft_loads(adapter)


LOADABLE = {
    "target_modules as a regex": {"target_modules": r".*\.(q_proj|v_proj)"},
    "exclude_modules": {"exclude_modules": ["o_proj"]},
    "modules_to_save null": {"modules_to_save": None},
    "task_type": {"task_type": "CAUSAL_LM"},
    "negative dropout": {"lora_dropout": -0.5},  # PEFT skips dropout at or below 0
    "init by name": {"init_lora_weights": "gaussian"},
    "layers_to_transform": {"layers_to_transform": [0, 1], "layers_pattern": "layers"},
}


@pytest.mark.parametrize("case", sorted(LOADABLE))
def test_configs_peft_loads_are_accepted(adapter, case):
    _with(adapter, **LOADABLE[case])
    assert read_adapter(adapter).config | LOADABLE[case] == read_adapter(adapter).config
    assert _peft_loads(adapter)


def _header_file(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _empty_entries(n: int) -> dict:
    return {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}


def test_a_header_over_the_size_limit_is_refused_before_it_is_parsed(adapter):
    weights = adapter / SAFETENSORS_FILE
    body = weights.read_bytes()
    (n,) = struct.unpack("<Q", body[:8])
    # A header padded past the limit with spaces (valid JSON): refused from its declared length.
    pad = MAX_HEADER_BYTES + 1 - n
    weights.write_bytes(struct.pack("<Q", n + pad) + body[8 : 8 + n] + b" " * pad + body[8 + n :])
    with pytest.raises(InvalidAdapter, match=f"the safetensors header is {n + pad} bytes, more than"):
        read_adapter(adapter)
    with pytest.raises(LimitExceeded):
        stfile.read_metadata(weights)


def test_more_tensors_than_the_limit_are_refused(tmp_path):
    path = tmp_path / "many.safetensors"
    _header_file(path, _empty_entries(MAX_TENSORS + 1))
    with pytest.raises(LimitExceeded, match=f"lists {MAX_TENSORS + 1} tensors"):
        stfile.load(path)
    _header_file(path, _empty_entries(MAX_TENSORS) | {"__metadata__": {"format": "pt"}})
    assert stfile.read_metadata(path) == {"format": "pt"}  # at the limit: read


def test_the_writer_refuses_what_the_reader_would(monkeypatch):
    monkeypatch.setattr(stfile, "MAX_TENSORS", 2)
    with pytest.raises(LimitExceeded):
        stfile.dumps({f"t{i}": torch.zeros(1) for i in range(3)})


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0]},
        {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]},
        {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]},
    ],
)
def test_header_entries_of_the_wrong_type_are_corrupt(tmp_path, entry):
    path = tmp_path / "x.safetensors"
    _header_file(path, {"x": entry}, b"\0" * 4)
    with pytest.raises(InvalidArtifact, match="corrupt"):
        stfile.load(path)


def test_a_valid_adapter_reads_as_before(adapter, source):
    checkpoint = read_adapter(adapter)
    original = load_file(source / SAFETENSORS_FILE)
    assert checkpoint.tensors.keys() == original.keys()
    assert all(torch.equal(checkpoint.tensors[k], v) for k, v in original.items())
