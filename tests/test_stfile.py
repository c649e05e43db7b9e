"""stfile.write streams tensor by tensor and writes exactly the bytes `dumps` makes."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import stfile


def test_write_is_dumps_byte_for_byte(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "b.weight": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "a.weight": torch.randn(4, 6, generator=gen).T,  # not contiguous
        "c.half": torch.randn(7, generator=gen).half(),
        "d.empty": torch.empty(0, 3),
        "e.flags": torch.tensor([True, False, True]),
        "f.ints": torch.arange(10, dtype=torch.int64),
    }
    metadata = {"format": "pt", "z": "last"}
    path = tmp_path / "x.safetensors"
    size = stfile.write(path, tensors, metadata)
    data = path.read_bytes()
    assert data == stfile.dumps(tensors, metadata) and size == len(data)
    loaded, meta = stfile.load(path)
    assert meta == metadata and sorted(loaded) == sorted(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)


def test_a_planned_file_in_any_order_is_dumps_byte_for_byte(tmp_path):
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "b.weight": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "a.weight": torch.randn(4, 6, generator=gen).T,  # not contiguous
        "c.half": torch.randn(7, generator=gen).half(),
        "d.empty": torch.empty(0, 3),
    }
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    planned = stfile.PlannedFile(tmp_path / "p.safetensors", specs, {"format": "pt"})
    for key in ("c.half", "d.empty", "b.weight", "a.weight"):  # not the file's (sorted) order
        planned.put(key, tensors[key])
    assert planned.close() == len(stfile.dumps(tensors, {"format": "pt"}))
    assert (tmp_path / "p.safetensors").read_bytes() == stfile.dumps(tensors, {"format": "pt"})

    incomplete = stfile.PlannedFile(tmp_path / "q.safetensors", specs)
    with pytest.raises(ValueError, match="planned"):
        incomplete.put("a.weight", tensors["a.weight"].float().T)  # the wrong shape
    with pytest.raises(ValueError, match="planned"):
        incomplete.put("x", tensors["c.half"])  # not planned
    incomplete.put("c.half", tensors["c.half"])
    with pytest.raises(ValueError, match="written twice"):
        incomplete.put("c.half", tensors["c.half"])
    with pytest.raises(ValueError, match="3 planned tensors were never written"):
        incomplete.close()
