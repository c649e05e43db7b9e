"""A deterministic, strict reader and writer for the safetensors format.

The `safetensors` package writes its metadata from a hash map, so the same tensors and metadata give
different bytes in different processes. Content addressing needs the same bytes every time, so this
module writes the format itself: an 8-byte little-endian header length, a JSON header with sorted keys
(padded with spaces to a multiple of 8), then each tensor's bytes in sorted key order. Files it writes
load with any safetensors reader. The reader checks every offset, dtype and shape, so a truncated or
tampered file is an error, never data.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .errors import InvalidArtifact, LimitExceeded
from .limits import MAX_HEADER_BYTES, MAX_TENSOR_DIMS, MAX_TENSORS

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def _tensor_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy where it is already a contiguous CPU tensor."""
    if tensor.numel() == 0:
        return memoryview(b"")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # View as bytes so bfloat16 (which numpy lacks) serializes too.
    return memoryview(flat.view(torch.uint8).numpy())


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return _tensor_view(tensor).tobytes()


def _prefix(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The length field and JSON header for `tensors`, stored in sorted key order."""
    return layout({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, metadata)[0]


def layout(
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The length field and JSON header for tensors of these (dtype, shape), and each one's byte span
    in the file (data in sorted key order): all a writer needs before it holds any tensor."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    spans: dict[str, tuple[int, int]] = {}
    for key in sorted(specs):
        dtype, shape = specs[key]
        if dtype not in _NAMES:
            raise TypeError(f"{key}: dtype {dtype} cannot be stored")
        numel = 1
        for d in shape:
            numel *= d
        size = numel * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        spans[key] = (offset, offset + size)
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    check_header_size(len(text))
    if len(specs) > MAX_TENSORS:
        raise LimitExceeded(f"{len(specs)} tensors are more than the limit of {MAX_TENSORS}")
    prefix = struct.pack("<Q", len(text)) + text
    return prefix, {k: (len(prefix) + a, len(prefix) + b) for k, (a, b) in spans.items()}


class PlannedFile:
    """A safetensors file whose header is written first, from the tensors' dtypes and shapes; each
    tensor's bytes go to their place as soon as it exists, in any order (positional writes, which
    release the GIL). The same bytes as `write` once every tensor is in. `close` checks that they all
    are; a file that is not closed is incomplete and is the caller's to remove."""

    def __init__(
        self,
        path: str | Path,
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        prefix, self._spans = layout(specs, metadata)
        self._specs = dict(specs)
        self._left = set(specs)
        self.size = max((end for _, end in self._spans.values()), default=len(prefix))
        self._fh = Path(path).open("wb")  # noqa: SIM115 - open across put() calls until close()
        self._fh.write(prefix)
        self._fh.flush()

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor's bytes (its dtype and shape must be the planned ones)."""
        if key not in self._left:
            raise ValueError(f"{key}: not planned, or written twice")
        if (tensor.dtype, tuple(tensor.shape)) != self._specs[key]:
            raise ValueError(f"{key}: {tensor.dtype} {tuple(tensor.shape)} is not the planned tensor")
        start = self._spans[key][0]
        view = _tensor_view(tensor)
        while view.nbytes:  # pwrite may write less than asked
            done = os.pwrite(self._fh.fileno(), view, start)
            view, start = view[done:], start + done
        self._left.discard(key)

    def close(self) -> int:
        """Close the file; its size in bytes. ValueError (file closed, incomplete) if a tensor is missing."""
        self._fh.close()
        if self._left:
            raise ValueError(f"{len(self._left)} planned tensors were never written")
        return self.size

    def abandon(self) -> None:
        self._fh.close()


def dumps(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialize tensors and string metadata to safetensors bytes, identical for identical input."""
    prefix = _prefix(tensors, metadata)
    return prefix + b"".join(_tensor_bytes(tensors[key]) for key in sorted(tensors))


def write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file (the same bytes as `dumps`); returns its size in bytes. Tensor by
    tensor, straight from their memory: no second copy of the whole file is ever held."""
    prefix = _prefix(tensors, metadata)
    size = len(prefix)
    with Path(path).open("wb") as fh:
        fh.write(prefix)
        for key in sorted(tensors):
            size += fh.write(_tensor_view(tensors[key]))
    return size


def check_header_size(n: int) -> None:
    """Raise LimitExceeded for a header longer than MAX_HEADER_BYTES (before reading any of it)."""
    if n > MAX_HEADER_BYTES:
        raise LimitExceeded(
            f"the safetensors header is {n} bytes, more than the limit of {MAX_HEADER_BYTES} "
            f"({MAX_TENSORS} tensors at most)"
        )


def header_length(head: bytes, size: int | None = None) -> int:
    """The header length the first 8 bytes of a safetensors file declare, checked against the file's
    `size` (where known) and the limit."""
    if len(head) < 8:
        raise InvalidArtifact("truncated: no safetensors header")
    (n,) = struct.unpack("<Q", head[:8])
    if size is not None and 8 + n > size:
        raise InvalidArtifact("truncated or corrupt: header length exceeds the file")
    check_header_size(n)
    return n


def _parse_header(data: bytes | memoryview) -> tuple[dict[str, str], dict[str, dict], int]:
    n = header_length(bytes(data[:8]), len(data))
    # Plain json: every value the reader uses is type-checked below, so NaN or a deep list is refused
    # there (strict_json's walk would double the cost of a large header).
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArtifact("corrupt: the safetensors header is not UTF-8") from None
    except (ValueError, RecursionError):  # JSONDecodeError, or an integer Python cannot convert
        raise InvalidArtifact("corrupt: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidArtifact("corrupt: the safetensors header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if len(header) > MAX_TENSORS:
        raise LimitExceeded(f"the safetensors header lists {len(header)} tensors, more than {MAX_TENSORS}")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidArtifact("corrupt: safetensors metadata must map strings to strings")
    return metadata, header, 8 + n


def read_metadata(path: str | Path) -> dict[str, str]:
    """Only the metadata of a safetensors file (reads the header, not the tensors)."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(8)
        body = fh.read(header_length(head, path.stat().st_size))
    metadata, _, _ = _parse_header(head + body)
    return metadata


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def loads(data: bytes | bytearray) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes, checking that every tensor lies inside the data and matches its shape.

    The tensors are views of one private copy of the data (`data` itself when it is a bytearray).
    """
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    metadata, entries, start = _parse_header(buffer)
    size = len(buffer) - start
    tensors: dict[str, torch.Tensor] = {}
    spans: list[tuple[int, int]] = []
    for key, entry in entries.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape, offsets = entry["shape"], entry["data_offsets"]
            begin, end = offsets
        except (KeyError, TypeError, ValueError):
            raise InvalidArtifact(f"corrupt: bad header entry for {key!r}") from None
        if not isinstance(shape, list) or not all(_is_index(d) for d in [*shape, begin, end]):
            raise InvalidArtifact(f"corrupt: bad header entry for {key!r}")
        if len(shape) > MAX_TENSOR_DIMS:
            raise InvalidArtifact(f"corrupt: {key!r} has more than {MAX_TENSOR_DIMS} dimensions")
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= size or end - begin != numel * itemsize:
            raise InvalidArtifact(f"truncated or corrupt: data of {key!r} lies outside the file")
        if numel == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif (start + begin) % itemsize == 0:
            flat = torch.frombuffer(buffer, dtype=dtype, count=numel, offset=start + begin)
            tensors[key] = flat.reshape(shape)
        else:  # unaligned data (other writers need not align): copy this tensor
            raw = bytearray(buffer[start + begin : start + end])
            tensors[key] = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise InvalidArtifact("corrupt: tensor data overlaps or leaves gaps")
        covered = end
    if covered != size:
        raise InvalidArtifact("corrupt: trailing bytes after the tensor data")
    return tensors, metadata


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by any writer; see `loads`."""
    path = Path(path)
    buffer = bytearray(path.stat().st_size)
    with path.open("rb") as fh:
        header_length(fh.read(8), len(buffer))  # an oversized header is refused before the file is read
        fh.seek(0)
        fh.readinto(buffer)
    return loads(buffer)
