"""Receiving an adapter upload: a streamed `multipart/form-data` body, parsed as it arrives.

Parts, in this order:
  metadata  JSON (`PushMetadata`): the push's options and the sha256 of each file part
  config    the adapter's `adapter_config.json`
  weights   `adapter_model.safetensors` (or `adapter_model.bin`, named by the part's filename)
  file      (any number, after the metadata) one more file of the folder, named by the part's
            filename: README.md, a tokenizer file, new_embeddings.safetensors (registry/folder_files.py);
            each announced with its sha256 in the metadata's `files`

The file parts go straight to a temporary folder while their sha256 is computed; nothing is buffered
whole in memory. The upload is refused, with nothing stored, when the body or the files outgrow the
limit (checked against Content-Length first, then byte by byte), when a part is missing, repeated,
unknown or out of order, when the metadata is not valid, or when a file's sha256 is not the one
announced. A refused body is still read to its end (up to a bound), so the client gets the problem
response instead of a reset connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from adapters.compress import stfile, strict_json
from adapters.compress.errors import CompressError
from adapters.compress.limits import MAX_CONFIG_BYTES
from adapters.registry import folder_files, limits
from adapters.registry.errors import (
    AdapterTooLarge,
    DigestMismatch,
    InvalidAdapterUpload,
    InvalidRequest,
    RegistryError,
)

from .schemas import PushMetadata

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
METADATA_LIMIT = 64 * 1024
OVERHEAD = 256 * 1024  # multipart boundaries and part headers
DRAIN_LIMIT = 64 * 1024 * 1024  # read at most this much of a refused body before answering


@dataclass
class Upload:
    folder: Path
    metadata: PushMetadata
    files: dict[str, int]  # file name -> bytes


class _Receiver:
    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.metadata: PushMetadata | None = None
        self.files: dict[str, int] = {}
        self.seen: set[str] = set()
        self.file_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None
        self._buffer = bytearray()
        self._out: IO[bytes] | None = None
        self._out_name = ""
        self._hash = hashlib.sha256()
        self._part_bytes = 0

    # -- parser callbacks (they raise RegistryError to refuse the upload)
    def on_part_begin(self) -> None:
        self._headers, self._part = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        if name not in ("metadata", "config", "weights", "file"):
            raise InvalidRequest(f"unexpected part {name!r}: send metadata, config, weights and files")
        if name in self.seen and name != "file":
            raise InvalidRequest(f"part {name!r} sent twice")
        if name != "metadata" and self.metadata is None:
            raise InvalidRequest("the metadata part must come first")
        self.seen.add(name)
        self._part = name
        self._buffer.clear()
        if name == "metadata":
            return
        if name == "file":
            assert self.metadata is not None
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            folder_files.check_name(filename, self._where())
            if filename not in self.metadata.files:
                raise InvalidRequest(f"file {filename!r} is not announced in the metadata's files")
            if filename in self.files:
                raise InvalidRequest(f"file {filename!r} sent twice")
            self._out_name = filename
        elif name == "config":
            self._out_name = CONFIG_FILE
        else:
            filename = options.get(b"filename", b"").decode("latin-1") or WEIGHT_FILES[0]
            if filename not in WEIGHT_FILES:
                raise InvalidRequest(f"weights must be named {' or '.join(WEIGHT_FILES)}, not {filename!r}")
            self._out_name = filename
        self._hash = hashlib.sha256()
        self._part_bytes = 0
        self._out = (self.folder / self._out_name).open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == "metadata":
            if len(self._buffer) + len(chunk) > METADATA_LIMIT:
                raise InvalidRequest(f"the metadata part is larger than {METADATA_LIMIT} bytes")
            self._buffer.extend(chunk)
            return
        assert self._out is not None
        self.file_bytes += len(chunk)
        if self.file_bytes > self.limit:
            raise AdapterTooLarge(
                f"{self._where()}: the adapter's files are larger than the limit of {self.limit} bytes"
            )
        if self._part == "config" and self.file_bytes > MAX_CONFIG_BYTES:
            raise InvalidAdapterUpload(
                f"{self._where()}/{CONFIG_FILE}: more than the limit of {MAX_CONFIG_BYTES} bytes"
            )
        self._part_bytes += len(chunk)
        if (
            self._part == "file"
            and folder_files.kind_of(self._out_name) in ("json", "text")
            and self._part_bytes > limits.MAX_TEXT_FILE_BYTES
        ):
            raise InvalidAdapterUpload(
                f"{self._where()}/{self._out_name}: more than the limit of {limits.MAX_TEXT_FILE_BYTES} bytes"
            )
        if self._out_name.endswith(".safetensors") and len(self._buffer) < 8:
            self._check_header_length(chunk)
        self._hash.update(chunk)
        self._out.write(chunk)

    def _where(self) -> str:
        return self.metadata.source if self.metadata and self.metadata.source else "upload"

    def _check_header_length(self, chunk: bytes) -> None:
        """Refuse a safetensors file whose header is too large from its first 8 bytes, before the
        rest of it is received."""
        self._buffer.extend(chunk[: 8 - len(self._buffer)])
        if len(self._buffer) == 8:
            try:
                stfile.header_length(bytes(self._buffer))
            except CompressError as exc:
                raise InvalidAdapterUpload(f"{self._where()}/{self._out_name}: {exc}") from None

    def on_part_end(self) -> None:
        if self._part == "metadata":
            try:
                self.metadata = PushMetadata.model_validate(strict_json.loads(bytes(self._buffer)))
            except (ValueError, ValidationError) as exc:
                raise InvalidRequest(f"invalid metadata part: {_short(exc)}") from None
            return
        assert self._out is not None and self.metadata is not None
        size = self._out.tell()
        self._out.close()
        self._out = None
        if self._part == "file":
            expected = self.metadata.files[self._out_name]
        elif self._part == "config":
            expected = self.metadata.config_sha256
        else:
            expected = self.metadata.weights_sha256
        actual = self._hash.hexdigest()
        if actual != expected:
            raise DigestMismatch(
                f"{self._out_name}: received bytes hash to sha256:{actual}, not the announced {expected}"
            )
        self.files[self._out_name] = size

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}" for e in exc.errors())
    return str(exc)


async def _drain(stream: AsyncIterator[bytes], already: int) -> None:
    read = already
    async for chunk in stream:
        read += len(chunk)
        if read > DRAIN_LIMIT:
            return


async def receive(request: Request, folder: Path, *, limit: int) -> Upload:
    """Parse the upload in `request` into `folder` (which must exist and be empty)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    stream = request.stream()
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    body_limit = limit + OVERHEAD
    if content_type != b"multipart/form-data" or not boundary:
        await _drain(stream, 0)
        raise InvalidRequest("send the adapter as multipart/form-data (parts metadata, config, weights)")
    if size is not None and size > body_limit:
        if size <= DRAIN_LIMIT:
            await _drain(stream, 0)
        raise AdapterTooLarge(f"upload: {size} bytes is more than the limit of {limit} bytes")
    receiver = _Receiver(folder, limit)
    callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise AdapterTooLarge(f"upload: the body is larger than the limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        await _drain(stream, received)
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        raise InvalidRequest("the client went away before the upload was complete") from None
    except RegistryError:
        await _drain(stream, received)
        raise
    finally:
        receiver.close()
    missing = [p for p in ("metadata", "config", "weights") if p not in receiver.seen]
    if receiver.metadata is not None:
        missing += sorted(f"file {n!r}" for n in receiver.metadata.files if n not in receiver.files)
    if missing or receiver.metadata is None or len(receiver.files) != 2 + len(receiver.metadata.files):
        raise InvalidRequest(f"incomplete upload: missing {', '.join(missing) or 'a part end'}")
    return Upload(folder, receiver.metadata, receiver.files)
