"""The NOLA format: `encode` turns fitted coefficients into the artifact's bytes (with fidelity
measured on what a reader rebuilds) and `NolaFormat` is what a reader needs to rebuild it.
`artifact.py` holds the file's layout; the codec object, which runs the whole pipeline, sits on top
in `nola.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import torch

from . import artifact, philox, transform
from .fidelity import measure
from .nola_config import resolve_device
from .nola_fit import NolaFit, lora_pairs
from .peft_io import LoraCheckpoint, LoraPair
from .protocol import CompressionReport, canonical_bytes
from .quant import BITS


class NolaFormat:
    """The reading side of the NOLA codec: what `protocol.decode_with` needs to rebuild an artifact.
    The pipeline decodes its own artifacts with it; `nola.NolaCodec` adds the writing side."""

    name: ClassVar[str] = artifact.FORMAT
    format_version: ClassVar[int] = artifact.FORMAT_VERSION
    read_versions: ClassVar[tuple[int, ...]] = artifact.READ_VERSIONS

    def decode(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return artifact.decode(tensors, metadata, resolve_device("auto"))

    @staticmethod
    def config_text(metadata: dict[str, str]) -> str:
        """The PEFT config's JSON text, where the artifact has it (see artifact.serialize)."""
        return artifact.config_text(metadata)


def encode(checkpoint: LoraCheckpoint, fitted: NolaFit) -> tuple[bytes, CompressionReport]:
    """The artifact for fitted coefficients, with fidelity measured on what a reader rebuilds."""
    data, report, _ = encode_decoded(checkpoint, fitted)
    return data, report


def encode_decoded(
    checkpoint: LoraCheckpoint, fitted: NolaFit
) -> tuple[bytes, CompressionReport, dict[str, torch.Tensor]]:
    """`encode`, with the tensors a reader rebuilds from the artifact (decoded once, to measure it):
    whoever measures the artifact further needs not decode it again."""
    cfg = fitted.config
    device = resolve_device(cfg.device)
    if fitted.transform is not None:
        return _encode_transform(checkpoint, fitted, device)
    stored = [(m.pair, m.stored_a, m.stored_b) for m in fitted.modules]
    digests = artifact.basis_digests(stored, cfg.basis, cfg.seed, device)
    records, codes, scales = artifact.pack(checkpoint, stored, digests)
    source = canonical_bytes(checkpoint)
    header: dict[str, Any] = {
        "generator": _generator(cfg.seed, device),
        "basis": cfg.basis,
        "layout": artifact.LAYOUT,
        "group_size": cfg.group_size,
        "source_digest": hashlib.sha256(source).hexdigest(),
        "params": asdict(cfg),
        "fit": fitted.method,
        "modules": records,
    }
    pairs = [m.pair for m in fitted.modules]
    extras, widened = artifact.store_extras(
        {k: checkpoint.tensors[k] for k in _lossless_keys(checkpoint, pairs)}, cfg.extras
    )
    if widened:
        header["fp16_extras"] = widened
    tensors = {artifact.CODES_KEY: codes, artifact.SCALES_KEY: scales, **extras}
    decoded = artifact.decode_tensors(header, tensors, device)
    fidelity = measure(checkpoint, decoded, pairs, fitted.stats)
    header["fidelity"] = {k: v for k, v in fidelity.items() if k != "modules"}
    for record, errors in zip(records, fidelity["modules"]):
        record["errors"] = errors
    data = artifact.serialize(checkpoint.config, header, tensors)
    params = {
        **asdict(cfg),
        "fit": fitted.method,
        "layout": artifact.LAYOUT,
        "bits_per_coefficient": _mean_bits(records),
        "coefficients": _coefficients(records),
    }
    coefficient_bytes = codes.numel() + 2 * scales.numel()
    fidelity.update(
        lossless_tensors=len(extras),
        lossless_bytes=sum(t.numel() * t.element_size() for t in extras.values()),
        lora_bytes=fitted.lora_bytes,
        coefficient_bytes=coefficient_bytes,
        lora_ratio=round(fitted.lora_bytes / coefficient_bytes, 3) if coefficient_bytes else None,
        **fitted.notes,
    )
    report = CompressionReport(
        codec=NolaFormat.name,
        source_bytes=len(source),
        artifact_bytes=len(data),
        params=params,
        fidelity=fidelity,
    )
    return data, report, decoded


def _generator(seed: int, device: torch.device) -> dict[str, Any]:
    return {
        "name": philox.GENERATOR,
        "version": philox.GENERATOR_VERSION,
        "seed": seed,
        "fingerprint": philox.fingerprint(seed, device),
    }


def _encode_transform(
    checkpoint: LoraCheckpoint, fitted: NolaFit, device: torch.device
) -> tuple[bytes, CompressionReport, dict[str, torch.Tensor]]:
    """The transform layout: the header lists modules (no per-row sizes or formats), one digest
    stands for every basis, and the codes tensor holds the whole coefficient stream."""
    cfg, code = fitted.config, fitted.transform
    assert code is not None
    pairs = lora_pairs(checkpoint)
    source = canonical_bytes(checkpoint)
    header: dict[str, Any] = {
        "generator": _generator(cfg.seed, device),
        "basis": "fast",
        "layout": transform.LAYOUT,
        "code": {
            "step": code.step,
            "bound": code.bound,
            "bytes": code.nbytes,
            "model": transform.MODEL,
        },
        "source_digest": hashlib.sha256(source).hexdigest(),
        "params": asdict(cfg),
        "fit": fitted.method,
        "modules": artifact.transform_records(checkpoint, pairs),
    }
    extras, widened = artifact.store_extras(
        {k: checkpoint.tensors[k] for k in _lossless_keys(checkpoint, pairs)}, cfg.extras
    )
    if widened:
        header["fp16_extras"] = widened
    codes = (
        torch.frombuffer(bytearray(code.codes), dtype=torch.uint8)
        if code.codes
        else torch.empty(0, dtype=torch.uint8)
    )
    tensors = {artifact.CODES_KEY: codes, **extras}
    header["digest"] = transform.bases_digest(pairs, cfg.seed, device)
    decoded = artifact.decode_tensors(header, tensors, device)
    fidelity = measure(checkpoint, decoded, pairs, fitted.stats)
    header["fidelity"] = {k: v for k, v in fidelity.items() if k != "modules"}
    header["errors"] = [m["weight"] for m in fidelity["modules"]]
    data = artifact.serialize(checkpoint.config, header, tensors)
    kept = transform.kept_coefficients(pairs, code)
    params = {
        **asdict(cfg),
        "fit": fitted.method,
        "layout": transform.LAYOUT,
        "bits_per_coefficient": round(8 * code.nbytes / kept, 3) if kept else 0.0,
        "coefficients": kept,
        "components": code.components,
    }
    fidelity.update(
        lossless_tensors=len(extras),
        lossless_bytes=sum(t.numel() * t.element_size() for t in extras.values()),
        lora_bytes=fitted.lora_bytes,
        coefficient_bytes=code.nbytes,
        lora_ratio=round(fitted.lora_bytes / code.nbytes, 3) if code.nbytes else None,
        **fitted.notes,
    )
    report = CompressionReport(
        codec=NolaFormat.name,
        source_bytes=len(source),
        artifact_bytes=len(data),
        params=params,
        fidelity=fidelity,
    )
    return data, report, decoded


def _lossless_keys(checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair]) -> list[str]:
    fitted = {k for p in pairs for k in (p.a_key, p.b_key)}
    return sorted(k for k in checkpoint.tensors if k not in fitted)


def _coefficients(records: Sequence[dict]) -> int:
    return sum(k for r in records for side in ("A", "B") for k in r[side]["k"])


def _mean_bits(records: Sequence[dict]) -> float:
    bits = sum(
        k * BITS[fmt]
        for r in records
        for side in ("A", "B")
        for k, fmt in zip(r[side]["k"], r[side]["format"])
        if k
    )
    coeffs = _coefficients(records)
    return round(bits / coeffs, 3) if coeffs else 0.0
