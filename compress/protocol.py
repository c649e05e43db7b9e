"""The codec interface, at the bottom of compress/: what every codec and artifact shares.

A codec turns a LoRA checkpoint into one artifact file and back.

Every artifact is a safetensors file whose metadata names its format (`adapters.format`) and format
version, and carries the original PEFT config. `reconstruct` reads that name and dispatches, so a
caller never needs to know which codec wrote an artifact. The `raw` codec is lossless: its artifact is
the canonical form of the source (sorted keys, config in the metadata), so it also serves as the
content-addressed source blob.

This module imports no codec: `codec.py` (on top) knows them all and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from . import stfile, strict_json
from .errors import InvalidAdapter, InvalidArtifact
from .peft_io import LoraCheckpoint, config_json, validate

FORMAT_KEY = "adapters.format"
VERSION_KEY = "adapters.format_version"
CONFIG_KEY = "adapters.peft_config"

# Called with (done, total) as a codec works through the modules of an adapter.
Progress = Callable[[int, int], None]


@dataclass
class CompressionReport:
    """What a codec did: its parameters, the fidelity it measured, and the bytes before and after
    (whole files: the source file and the artifact)."""

    codec: str
    source_bytes: int
    artifact_bytes: int
    params: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.artifact_bytes if self.artifact_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "source_bytes": self.source_bytes,
            "artifact_bytes": self.artifact_bytes,
            "ratio": round(self.ratio, 3),
            "params": self.params,
            "fidelity": self.fidelity,
        }


class Codec(Protocol):
    name: ClassVar[str]
    format_version: ClassVar[int]

    def compress(
        self,
        checkpoint: LoraCheckpoint,
        out_file: Path,
        *,
        progress: Progress | None = None,
        source_bytes: int | None = None,
    ) -> CompressionReport:
        """Write the artifact for `checkpoint` to `out_file` and report what it cost against the
        source file (`source_bytes`, by default the size of the canonical source file)."""
        ...

    def decode(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Rebuild the PEFT tensors from an artifact's tensors and metadata."""
        ...


def config_metadata(codec: type[Codec] | Codec, config: dict[str, Any]) -> dict[str, str]:
    """The metadata every artifact starts with."""
    return {
        FORMAT_KEY: codec.name,
        VERSION_KEY: str(codec.format_version),
        CONFIG_KEY: config_json(config),
    }


class RawCodec:
    """Lossless: the PEFT tensors as they are, in canonical form."""

    name: ClassVar[str] = "raw"
    format_version: ClassVar[int] = 1

    def compress(
        self,
        checkpoint: LoraCheckpoint,
        out_file: Path,
        *,
        progress: Progress | None = None,
        source_bytes: int | None = None,
    ) -> CompressionReport:
        data = canonical_bytes(checkpoint)
        Path(out_file).write_bytes(data)
        if progress:
            progress(1, 1)
        return CompressionReport(
            codec=self.name,
            source_bytes=source_bytes or len(data),
            artifact_bytes=len(data),
            fidelity={"lossless": True, "max_rel_error": 0.0},
        )

    def decode(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return tensors


def canonical_bytes(checkpoint: LoraCheckpoint) -> bytes:
    """The canonical serialization of an adapter: identical content gives identical bytes."""
    return stfile.dumps(checkpoint.tensors, config_metadata(RawCodec, checkpoint.config))


def decode_with(cls: type, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraCheckpoint:
    """Rebuild the checkpoint an artifact of codec `cls` stands for, checking its version and the
    result."""
    name = metadata.get(FORMAT_KEY)
    version = metadata.get(VERSION_KEY)
    readable = getattr(cls, "read_versions", (cls.format_version,))
    if version not in {str(v) for v in readable}:
        raise InvalidArtifact(
            f"unsupported {name} artifact version {version!r} "
            f"(this build reads {', '.join(str(v) for v in readable)})"
        )
    try:
        text = metadata[CONFIG_KEY] if CONFIG_KEY in metadata else cls.config_text(metadata)
        config = strict_json.loads(text)
    except (KeyError, AttributeError, strict_json.JSONRefused):
        raise InvalidArtifact("corrupt: the artifact carries no readable PEFT config") from None
    peft_tensors = cls().decode(tensors, metadata, config)
    try:
        return validate(config, peft_tensors)
    except InvalidAdapter as exc:
        raise InvalidArtifact(f"artifact decodes to an invalid adapter: {exc}") from None
