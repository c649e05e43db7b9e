"""Rebuilding a transform-code artifact straight into a PEFT directory, module by module.

The output's safetensors header follows from the artifact's header alone (every key, dtype and
shape is listed there), so it is written first; each module's A and B then go to their place in the
file as soon as their window is rotated back, checked for NaN/Inf before any of their bytes are
written. The decoder reads the coefficient stream on one thread (holding the GIL) while a second
rotates and writes (torch and positional file writes release it), and no more than two windows are
ever held: the whole adapter never is. The bytes are those `peft_io.write_adapter` writes from the
in-memory reader's result (tests/test_stream_write.py compares both).

Only the transform layout of format 3 is streamed; `plan` returns None for everything else, and for
an artifact it cannot plan, so the in-memory reader handles (and reports) it exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import artifact, stfile, strict_json, transform, transform_read
from .errors import InvalidAdapter, InvalidArtifact
from .peft_io import (
    CONFIG_FILE,
    FLOAT_DTYPES,
    SAFETENSORS_FILE,
    LoraPair,
    check_config,
    config_json,
    find_pairs,
    normalize_config,
)
from .protocol import FORMAT_KEY, VERSION_KEY

# What write_adapter stores as the safetensors metadata of a PEFT directory.
PEFT_METADATA = {"format": "pt"}


@dataclass
class Written:
    """What a rebuilt PEFT directory holds."""

    out_dir: Path
    tensors: int
    modules: int
    nbytes: int  # the tensors' bytes (as LoraCheckpoint.nbytes counts them)


@dataclass
class _Plan:
    config: dict[str, Any]
    header: dict[str, Any]
    pairs: list[LoraPair]
    dtypes: list[tuple[torch.dtype, torch.dtype]]
    step: float
    bound: int
    seed: int
    extras: dict[str, torch.Tensor]  # stored tensors, as the reader returns them (fp16 widened)
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    modules: int


def plan(tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device) -> _Plan | None:
    """Everything the streamed write needs, after every check the in-memory reader makes before it
    decodes (checksum, generator, header, config, shapes); None when this artifact is not streamed
    or any check fails (the in-memory reader then reports it)."""
    versions = {str(v) for v in artifact.READ_VERSIONS}
    if metadata.get(FORMAT_KEY) != artifact.FORMAT or metadata.get(VERSION_KEY) not in versions:
        return None
    try:
        if metadata.get(artifact.CHECKSUM_KEY) != artifact.checksum(tensors, metadata):
            return None
        header = artifact.decode_header(metadata[artifact.HEADER_KEY])
        if header.get("layout") != transform.LAYOUT:
            return None
        config = strict_json.loads(artifact.config_text(metadata))
        check_config(config)
        config = normalize_config(config)
        seed = artifact.check_generator(header, device)
        pairs, dtypes, step, bound, model = artifact.transform_plan(header, tensors)
        if model != transform.MODEL:
            return None
        extras = {k: v for k, v in tensors.items() if k != artifact.CODES_KEY}
        keys = [k for p in pairs for k in (p.a_key, p.b_key)]
        if len(set(keys)) != len(keys) or set(keys) & set(extras):
            return None  # overlapping keys: the in-memory reader's last-wins result, not streamed
        for key in artifact.widened_extras(header, extras):
            extras[key] = extras[key].float()
        specs = {k: (v.dtype, tuple(v.shape)) for k, v in extras.items()}
        for p, (dtype_a, dtype_b) in zip(pairs, dtypes):
            specs[p.a_key] = (dtype_a, (p.rank, p.in_features))
            specs[p.b_key] = (dtype_b, (p.out_features, p.rank))
        if any(dtype not in FLOAT_DTYPES for dtype, _ in specs.values()):
            return None
        # The in-memory reader's validate(), on shapes alone (meta tensors hold no data).
        shapes = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (dtype, shape) in specs.items()}
        modules = len(find_pairs(config, shapes))
    except (InvalidArtifact, InvalidAdapter, KeyError, strict_json.JSONRefused):
        return None
    return _Plan(config, header, pairs, dtypes, step, bound, seed, extras, specs, modules)


def write(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], out_dir: str | Path, device: torch.device
) -> Written | None:
    """Rebuild the artifact (`tensors`, `metadata` as stfile.load gives them) into the PEFT directory
    `out_dir`, streamed; None (nothing written) when it is not streamed (see `plan`). On any error
    the files it began are removed and InvalidArtifact is raised."""
    p = plan(tensors, metadata, device)
    if p is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / SAFETENSORS_FILE
    partial = out / (SAFETENSORS_FILE + ".partial")
    file = stfile.PlannedFile(partial, p.specs, PEFT_METADATA)
    try:
        for key, value in p.extras.items():
            _put(file, key, value)

        def sink(i: int, a: torch.Tensor, b: torch.Tensor) -> None:
            _put(file, p.pairs[i].a_key, a)
            _put(file, p.pairs[i].b_key, b)

        codes = tensors[artifact.CODES_KEY].numpy().tobytes()
        scales = [pair.scale for pair in p.pairs]
        try:
            _, digest = transform_read.decode(
                p.pairs, scales, p.step, p.bound, codes, p.seed, device, p.dtypes, sink=sink
            )
        except InvalidArtifact:
            raise
        except (ValueError, RuntimeError) as exc:
            raise InvalidArtifact(f"corrupt: {exc}") from None
        if digest != p.header.get("digest"):
            raise InvalidArtifact(artifact.DIGEST_MISMATCH)
        file.close()
    except BaseException:
        file.abandon()
        partial.unlink(missing_ok=True)
        raise
    (out / CONFIG_FILE).write_text(config_json(p.config, indent=2) + "\n")
    partial.replace(target)
    nbytes = sum(_nbytes(dtype, shape) for dtype, shape in p.specs.values())
    return Written(out, len(p.specs), p.modules, nbytes)


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def _put(file: stfile.PlannedFile, key: str, tensor: torch.Tensor) -> None:
    """The in-memory reader's NaN/Inf check (peft_io.check_tensors), then the tensor's bytes."""
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise InvalidArtifact(f"artifact decodes to an invalid adapter: {key}: contains NaN or Inf values")
    file.put(key, tensor)
