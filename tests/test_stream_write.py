"""The streamed write of a transform-code artifact (compress/stream_write.py): the same bytes as the
in-memory reader plus write_adapter, in any windowing; a NaN found mid-stream leaves nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from adapters.cli import main
from adapters.compress import stfile, stream_write, transform_read
from adapters.compress.artifact import HEADER_KEY, annotate, decode_header
from adapters.compress.codec import reconstruct, reconstruct_to_dir, write_reconstructed
from adapters.compress.errors import InvalidArtifact
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    LoraCheckpoint,
    read_adapter,
    write_adapter,
)
from tests.factories import make_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> LoraCheckpoint:
    path = make_adapter(
        tmp_path_factory.mktemp("stream") / "adapter",
        r=8,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        rank_pattern={"down_proj": 4},
        modules_to_save=["lm_head"],
    )
    return read_adapter(path)


@pytest.fixture(scope="module")
def artifact(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "adapter.nola"
    NolaCodec(NolaConfig(ratio=2)).compress(adapter, out)
    return out


def _in_memory(path, out_dir):
    return write_adapter(reconstruct(path), out_dir)


@pytest.mark.parametrize("window", [transform_read.DECODE_ELEMENTS, 1])
def test_streamed_bytes_are_the_in_memory_readers(artifact, tmp_path, monkeypatch, window):
    # window 1: every module is its own window, so the writes land out of key order and interleave
    # with the decode; the default: the whole small adapter in one window.
    monkeypatch.setattr(transform_read, "DECODE_ELEMENTS", window)
    tensors, metadata = stfile.load(artifact)
    written = stream_write.write(tensors, metadata, tmp_path / "streamed", torch.device("cpu"))
    assert written is not None  # this artifact is streamed, not handed to the in-memory reader
    _in_memory(artifact, tmp_path / "memory")
    for name in (SAFETENSORS_FILE, CONFIG_FILE):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == [CONFIG_FILE, SAFETENSORS_FILE]
    back = read_adapter(tmp_path / "streamed")
    assert written.tensors == len(back.tensors) and written.modules == len(back.pairs)
    assert written.nbytes == back.nbytes()


def test_reconstruct_to_dir_streams_and_peft_loading_is_unchanged(adapter, artifact, tmp_path):
    reconstruct_to_dir(artifact, tmp_path / "out")
    back = read_adapter(tmp_path / "out")
    assert back.config == adapter.config and back.tensors.keys() == adapter.tensors.keys()
    for key, tensor in adapter.tensors.items():
        assert back.tensors[key].dtype == tensor.dtype and back.tensors[key].shape == tensor.shape
    assert torch.equal(back.tensors[back.pairs[0].a_key], reconstruct(artifact).tensors[back.pairs[0].a_key])


def test_raw_artifacts_take_the_in_memory_path(adapter, tmp_path):
    from adapters.compress.protocol import RawCodec

    RawCodec().compress(adapter, tmp_path / "raw.st")
    tensors, metadata = stfile.load(tmp_path / "raw.st")
    assert stream_write.write(tensors, metadata, tmp_path / "no", torch.device("cpu")) is None
    assert not (tmp_path / "no").exists()
    written = write_reconstructed(tmp_path / "raw.st", tmp_path / "out")
    assert read_adapter(tmp_path / "out").tensors.keys() == adapter.tensors.keys()
    assert written.tensors == len(adapter.tensors) and written.nbytes == adapter.nbytes()


def _poisoned(artifact, tmp_path):
    """A valid artifact (checksum and all) whose last module's scale is infinite: its B decodes to
    NaN after the modules before it were written."""
    metadata = stfile.read_metadata(artifact)
    header = decode_header(metadata[HEADER_KEY])
    header["modules"][-1][6] = float("inf")
    path = tmp_path / "poisoned.nola"
    path.write_bytes(annotate(artifact.read_bytes(), {"modules": header["modules"]}))
    return path, header["modules"][-1][0]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_nan_mid_stream_fails_and_leaves_no_file(artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(transform_read, "DECODE_ELEMENTS", 1)
    path, module = _poisoned(artifact, tmp_path)
    with pytest.raises(InvalidArtifact, match=f"{module}.lora_B.weight: contains NaN or Inf") as streamed:
        reconstruct_to_dir(path, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no config, no partial safetensors
    with pytest.raises(InvalidArtifact) as in_memory:
        reconstruct(path)
    assert str(streamed.value) == str(in_memory.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_the_command_fails_in_one_line_and_leaves_nothing(adapter, artifact, tmp_path):
    path, _ = _poisoned(artifact, tmp_path)
    out = tmp_path / "rebuilt"
    result = CliRunner().invoke(main, ["reconstruct", str(path), "-o", str(out)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "NaN or Inf" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poisoned.nola"]
    ok = CliRunner().invoke(main, ["reconstruct", str(artifact), "-o", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert (report["tensors"], report["modules"]) == (len(adapter.tensors), len(adapter.pairs))
    assert (out / SAFETENSORS_FILE).read_bytes() == (
        _in_memory(artifact, tmp_path / "memory") / SAFETENSORS_FILE
    ).read_bytes()


def test_the_command_does_not_import_peft_or_transformers(artifact, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.argv = ['adapters', 'reconstruct', sys.argv[1], '-o', sys.argv[2]]\n"
        "from adapters.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(artifact), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / SAFETENSORS_FILE).exists()
