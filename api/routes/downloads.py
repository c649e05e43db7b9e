"""Downloads of a version: its files one by one (the reconstructed PEFT files and the others it was
pushed with: README, tokenizer, ...), all of them as a tarball, or the stored (compressed) artifact.
Reconstructions come from the cache when it has them. Every byte is checked against its sha256 as it
streams (the digest is also sent, in `X-Content-SHA256` and the ETag); a mismatch aborts the
response, so a client never receives a whole wrong file. Every route answers `HEAD` and single
`Range` requests (see api/ranges.py), so a cut download resumes."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from adapters.registry import folder_files
from adapters.registry.cache import CachedFile
from adapters.registry.errors import FileNotFound
from adapters.registry.refs import AdapterName, Ref

from .. import problems, ranges
from ..auth import Reader
from ..params import Name, Namespace, Number
from ..state import State

router = APIRouter(prefix="/v1/adapters/{namespace}/{name}/versions/{number}", tags=["downloads"])

FileName = Annotated[
    str,
    Path(
        description="adapter_config.json, adapter_model.safetensors, or another file the version was "
        "pushed with (README.md, tokenizer files, new_embeddings.safetensors, ...)",
        max_length=255,
    ),
]
MEDIA_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8"}
BLOCK = 512


def _binary(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in media_types},
            "headers": {
                "X-Content-SHA256": {"description": "sha256 of the body", "schema": {"type": "string"}},
            },
        },
        206: {"description": "The part of the body the `Range` header asked for"},
        **problems.responses(401, 403, 404, 409, 416, 422, 503),
    }


def _headers(filename: str, size: int, sha256: str | None) -> dict[str, str]:
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{filename}"',
        # A version number names immutable content.
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if sha256:
        headers["X-Content-SHA256"] = sha256
        headers["ETag"] = f'"sha256:{sha256}"'
    return headers


@router.head(
    "/files/{filename}",
    operation_id="download_file_head",
    summary="The headers of the GET (size, digest), without the body",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
@router.get(
    "/files/{filename}",
    response_class=StreamingResponse,
    summary="One file of a ready version: a reconstructed PEFT file or one it was pushed with",
    responses=_binary("The file", "application/json", "application/octet-stream"),
)
def download_file(
    request: Request,
    namespace: Namespace,
    name: Name,
    number: Number,
    filename: FileName,
    state: State,
    principal: Reader,
) -> Response:
    if filename not in ("adapter_config.json", "adapter_model.safetensors") and (
        folder_files.kind_of(filename) is None or "/" in filename
    ):  # a name no version can hold: a bad request, as before folders were stored
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("path", "filename"),
                    "msg": f"no version holds a file {filename!r}",
                }
            ]
        )
    version, files = state.registry.open_files(Ref(AdapterName(namespace, name), number=number))
    if filename not in files.files:
        files.close()
        raise FileNotFound(f"{version.ref} has no file {filename!r}")
    for other in files.files.values():
        if other.name != filename:
            other.close()
    cached = files.files[filename]
    headers = _headers(filename, cached.size, cached.sha256)
    return ranges.send(
        request,
        size=cached.size,
        etag=headers["ETag"],
        media_type=MEDIA_TYPES.get(filename[filename.rfind(".") :], "application/octet-stream"),
        headers=headers,
        whole=cached.chunks,
        part=lambda wanted: cached.range_chunks(wanted.start, wanted.end),
        close=cached.close,
    )


def _tar(prefix: str, files: list[CachedFile]) -> tuple[int, Iterator[bytes]]:
    """A ustar archive of `files` under `prefix/`, streamed; its size is known up front."""
    headers = []
    for f in files:
        info = tarfile.TarInfo(f"{prefix}/{f.name}")
        info.size, info.mode, info.mtime = f.size, 0o644, 0
        headers.append(info.tobuf(format=tarfile.USTAR_FORMAT))
    pads = [b"\0" * (-f.size % BLOCK) for f in files]
    size = sum(len(h) + f.size + len(p) for h, f, p in zip(headers, files, pads)) + 2 * BLOCK

    def chunks() -> Iterator[bytes]:
        for header, f, pad in zip(headers, files, pads):
            yield header
            yield from f.chunks()
            yield pad
        yield b"\0" * (2 * BLOCK)

    return size, chunks()


@router.head(
    "/archive",
    operation_id="download_archive_head",
    summary="The headers of the GET (size, digest), without the body",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
@router.get(
    "/archive",
    response_class=StreamingResponse,
    summary="The reconstructed PEFT directory of a ready version, as a tarball",
    responses=_binary(
        "application/x-tar",
        "A tar of <name>-<number>/ with adapter_config.json, adapter_model.safetensors and the other files",
    ),
)
def download_archive(
    request: Request, namespace: Namespace, name: Name, number: Number, state: State, principal: Reader
) -> Response:
    version, files = state.registry.open_files(Ref(AdapterName(namespace, name), number=number))
    prefix = f"{name}-{number}"
    size, body = _tar(prefix, [files.files[n] for n in sorted(files.files)])
    headers = _headers(f"{prefix}.tar", size, None)
    # The tar's bytes follow from the artifact's (reconstruction and the tar headers are deterministic)
    # and, for a version with other files, from those (its content digest covers them).
    extra = f":{version.content_digest}" if version.files else ""
    etag = f'"tar-sha256:{version.artifact_digest}{extra}"'
    headers["ETag"] = etag
    return ranges.send(
        request,
        size=size,
        etag=etag,
        media_type="application/x-tar",
        headers=headers,
        whole=lambda: body,
        part=lambda wanted: ranges.slice_stream(body, wanted),
        close=files.close,
    )


@router.head(
    "/artifact",
    operation_id="download_artifact_head",
    summary="The headers of the GET (size, digest), without the body",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
@router.get(
    "/artifact",
    response_class=StreamingResponse,
    summary="The stored artifact of a ready version (compressed, as its codec wrote it)",
    responses=_binary(
        "application/octet-stream", "The artifact; `adapters reconstruct` turns it into PEFT files"
    ),
)
def download_artifact(
    request: Request, namespace: Namespace, name: Name, number: Number, state: State, principal: Reader
) -> Response:
    version = state.registry.ready_version(Ref(AdapterName(namespace, name), number=number))
    digest, size = version.artifact_digest, version.artifact_size
    assert digest is not None and size is not None
    filename = f"{name}-{number}.{version.codec or 'raw'}.safetensors"
    headers = _headers(filename, size, digest)
    storage = state.registry.storage
    return ranges.send(
        request,
        size=size,
        etag=headers["ETag"],
        media_type="application/octet-stream",
        headers=headers,
        # Opened only for a body (not for HEAD or a 416); read whole either way, as the blob's
        # sha256 is checked at its end.
        whole=lambda: storage.iter_chunks(digest),
        part=lambda wanted: ranges.slice_stream(storage.iter_chunks(digest), wanted),
    )
