"""The codecs by name, on top of compress/: `reconstruct` reads an artifact's format name and
dispatches, so a caller never needs to know which codec wrote an artifact.

The shared interface (keys, report, the raw codec) lives in `protocol.py`; it is re-exported here,
where callers have always found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import stfile, stream_write
from .errors import InvalidArtifact
from .nola import NolaCodec
from .nola_config import resolve_device
from .peft_io import LoraCheckpoint, write_adapter
from .protocol import (  # noqa: F401 - re-exported
    CONFIG_KEY,
    FORMAT_KEY,
    VERSION_KEY,
    Codec,
    CompressionReport,
    Progress,
    RawCodec,
    canonical_bytes,
    config_metadata,
    decode_with,
)

_CODECS: dict[str, type] = {"raw": RawCodec, "nola": NolaCodec}


def register_codec(codec: type) -> type:
    """Make a codec known to `reconstruct` (used as a class decorator)."""
    _CODECS[codec.name] = codec
    return codec


def codec_class(name: str) -> type:
    try:
        return _CODECS[name]
    except KeyError:
        raise InvalidArtifact(f"unknown codec or artifact format {name!r}") from None


def make_codec(name: str, **params: Any) -> Codec:
    """Build a codec by name with its parameters (e.g. `make_codec("nola", ratio=20)`)."""
    cls = codec_class(name)
    if name == "raw":
        if params:
            raise ValueError(f"the raw codec takes no parameters, got {sorted(params)}")
        return cls()
    return cls.from_params(**params)


def load_artifact(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return stfile.load(path)


def decode_artifact(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraCheckpoint:
    """Rebuild the checkpoint an artifact stands for, checking its format and the result."""
    name = metadata.get(FORMAT_KEY)
    if name is None:
        raise InvalidArtifact(f"not an adapter artifact: no {FORMAT_KEY} in its metadata")
    return decode_with(codec_class(name), tensors, metadata)


def reconstruct(path: str | Path) -> LoraCheckpoint:
    """Read any artifact and rebuild its adapter in memory."""
    return decode_artifact(*load_artifact(path))


def reconstruct_to_dir(path: str | Path, out_dir: str | Path) -> Path:
    """Read any artifact and write the PEFT directory it stands for."""
    return write_reconstructed(path, out_dir).out_dir


def write_reconstructed(path: str | Path, out_dir: str | Path) -> stream_write.Written:
    """`reconstruct_to_dir`, saying what it wrote. Transform-code artifacts are rebuilt straight into
    the file, module by module (stream_write.py); others in memory, then written. The same bytes
    either way; on an error the safetensors file it began is removed."""
    tensors, metadata = load_artifact(path)
    written = stream_write.write(tensors, metadata, out_dir, resolve_device("auto"))
    if written is not None:
        return written
    checkpoint = decode_artifact(tensors, metadata)
    write_adapter(checkpoint, out_dir)
    return stream_write.Written(
        Path(out_dir), len(checkpoint.tensors), len(checkpoint.pairs), checkpoint.nbytes()
    )
