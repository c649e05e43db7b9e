"""PEFT directories: reading every key form, validation errors, and lossless round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters.compress import stfile
from adapters.compress.codec import RawCodec, canonical_bytes, reconstruct
from adapters.compress.errors import InvalidAdapter, InvalidArtifact
from adapters.compress.peft_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    module_scale,
    read_adapter,
    write_adapter,
)
from tests.factories import make_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return make_adapter(
        tmp_path_factory.mktemp("a") / "adapter",
        target_modules=["q_proj", "v_proj", "down_proj"],
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
        modules_to_save=["lm_head"],
    )


def test_reads_pairs_patterns_and_extras(adapter_dir):
    ckpt = read_adapter(adapter_dir)
    by_module = {p.module: p for p in ckpt.pairs}
    assert len(ckpt.pairs) == 6
    down = by_module["model.layers.0.mlp.down_proj"]
    assert (down.rank, down.in_features, down.out_features) == (2, 64, 32)
    assert down.scale == pytest.approx(8 / math.sqrt(2))  # rsLoRA: alpha / sqrt(r)
    assert by_module["model.layers.1.self_attn.q_proj"].scale == pytest.approx(3 / 2)
    assert by_module["model.layers.0.self_attn.q_proj"].scale == pytest.approx(8 / 2)
    assert ckpt.extra_keys() == ["base_model.model.lm_head.weight"]


def test_scale_without_rslora():
    config = {"r": 8, "lora_alpha": 16, "alpha_pattern": {"v_proj": 4}}
    assert module_scale(config, "model.layers.0.self_attn.q_proj") == 2.0
    assert module_scale(config, "model.layers.0.self_attn.v_proj") == 0.5


def test_write_is_lossless_and_deterministic(adapter_dir, tmp_path):
    ckpt = read_adapter(adapter_dir)
    write_adapter(ckpt, tmp_path / "one")
    write_adapter(read_adapter(tmp_path / "one"), tmp_path / "two")
    first = (tmp_path / "one" / SAFETENSORS_FILE).read_bytes()
    assert first == (tmp_path / "two" / SAFETENSORS_FILE).read_bytes()
    original = load_file(adapter_dir / SAFETENSORS_FILE)
    written = load_file(tmp_path / "one" / SAFETENSORS_FILE)  # the reference reader accepts our writer
    assert original.keys() == written.keys()
    for key, tensor in original.items():
        assert written[key].dtype == tensor.dtype
        assert torch.equal(written[key], tensor)


def test_stfile_round_trips_dtypes():
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "empty": torch.empty(0, 3),
    }
    data = stfile.dumps(tensors, {"b": "2", "a": "1"})
    assert data == stfile.dumps(dict(reversed(list(tensors.items()))), {"a": "1", "b": "2"})
    loaded, meta = stfile.loads(data)
    assert meta == {"a": "1", "b": "2"}
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_stfile_rejects_truncation(cut):
    data = stfile.dumps({"x": torch.ones(16)})
    with pytest.raises(InvalidArtifact):
        stfile.loads(data[:cut])


def test_raw_codec_is_bit_exact(adapter_dir, tmp_path):
    ckpt = read_adapter(adapter_dir)
    report = RawCodec().compress(ckpt, tmp_path / "a.raw")
    assert report.artifact_bytes == (tmp_path / "a.raw").stat().st_size
    # Whole files: the lossless artifact is the canonical source file itself, 1.0x.
    assert report.source_bytes == report.artifact_bytes == len(canonical_bytes(ckpt)) and report.ratio == 1
    back = reconstruct(tmp_path / "a.raw")
    assert back.config == ckpt.config
    assert all(torch.equal(back.tensors[k], v) for k, v in ckpt.tensors.items())
    assert canonical_bytes(back) == canonical_bytes(ckpt)


def _copy(adapter_dir, tmp_path):
    out = tmp_path / "bad"
    write_adapter(read_adapter(adapter_dir), out)
    return out


def _edit_tensors(path, edit):
    tensors = load_file(path / SAFETENSORS_FILE)
    edit(tensors)
    save_file(tensors, path / SAFETENSORS_FILE)


def _edit_config(path, edit):
    config = json.loads((path / CONFIG_FILE).read_text())
    edit(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _first_key(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


BAD_INPUTS = {
    "missing config": (lambda p: (p / CONFIG_FILE).unlink(), "missing adapter_config.json"),
    "config not json": (lambda p: (p / CONFIG_FILE).write_text("{r: 4"), "not valid JSON"),
    "unknown peft_type": (
        lambda p: _edit_config(p, lambda c: c.update(peft_type="IA3")),
        "unsupported peft_type 'IA3'",
    ),
    "bad rank": (lambda p: _edit_config(p, lambda c: c.update(r=0)), "positive integer"),
    "missing weights": (lambda p: (p / SAFETENSORS_FILE).unlink(), "missing adapter_model.safetensors"),
    "truncated safetensors": (
        lambda p: (p / SAFETENSORS_FILE).write_bytes((p / SAFETENSORS_FILE).read_bytes()[:-7]),
        "malformed safetensors",
    ),
    "garbage safetensors": (
        lambda p: (p / SAFETENSORS_FILE).write_bytes(b"\xff" * 64),
        "malformed safetensors",
    ),
    "mismatched shapes": (
        lambda p: _edit_tensors(
            p, lambda t: t.__setitem__(_first_key(t, "lora_B.weight"), torch.zeros(32, 3))
        ),
        "inconsistent shapes",
    ),
    "rank differs from config": (
        lambda p: _edit_config(p, lambda c: c.update(r=8)),
        "the config gives rank 8",
    ),
    "orphan factor": (
        lambda p: _edit_tensors(p, lambda t: t.pop(_first_key(t, "lora_B.weight"))),
        "has no matching lora_B.weight",
    ),
    "nan": (
        lambda p: _edit_tensors(p, lambda t: t[_first_key(t, "lora_A.weight")].__setitem__((0, 0), math.nan)),
        "NaN or Inf",
    ),
    "inf": (
        lambda p: _edit_tensors(p, lambda t: t[_first_key(t, "lora_B.weight")].__setitem__((1, 1), math.inf)),
        "NaN or Inf",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_reason(adapter_dir, tmp_path, case):
    path = _copy(adapter_dir, tmp_path)
    damage, message = BAD_INPUTS[case]
    damage(path)
    with pytest.raises(InvalidAdapter, match=message):
        read_adapter(path)


def test_bin_checkpoints_load_with_weights_only(adapter_dir, tmp_path):
    path = _copy(adapter_dir, tmp_path)
    tensors = load_file(path / SAFETENSORS_FILE)
    (path / SAFETENSORS_FILE).unlink()
    torch.save(tensors, path / "adapter_model.bin")
    assert read_adapter(path).tensors.keys() == tensors.keys()


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_pickles_that_run_code_are_refused(adapter_dir, tmp_path, capsys):
    path = _copy(adapter_dir, tmp_path)
    (path / SAFETENSORS_FILE).unlink()
    torch.save({"x": _Payload()}, path / "adapter_model.bin")
    with pytest.raises(InvalidAdapter, match="weights_only"):
        read_adapter(path)
    assert "must never run" not in capsys.readouterr().out


def test_set_valued_config_fields_are_sorted(adapter_dir, tmp_path):
    path = _copy(adapter_dir, tmp_path)
    _edit_config(path, lambda c: c.update(target_modules=["v_proj", "q_proj", "down_proj"]))
    first = canonical_bytes(read_adapter(path))
    _edit_config(path, lambda c: c.update(target_modules=["down_proj", "q_proj", "v_proj"]))
    assert canonical_bytes(read_adapter(path)) == first
    assert read_adapter(path).config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
