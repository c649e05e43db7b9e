"""`HEAD` and single byte ranges (RFC 9110) for every download, so clients resume a cut transfer.

A download answers `HEAD` with the headers of its `GET` and no body, and a `GET` with
`Range: bytes=a-b` (also `a-` and `-n`) with 206 and that part; a range that starts past the end is
416 with `Content-Range: bytes */<size>`. Several ranges at once, other units, and a range whose
`If-Range` names another ETag get the whole file (200), as RFC 9110 allows. Every part is served
only after the bytes it comes from are checked against their sha256 (see `slice_stream` and
`CachedFile.range_chunks`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in the header

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def requested_range(request: Request, size: int, etag: str | None) -> ByteRange | None:
    """The one range the request asks for, or None for the whole file. Raises 416 when it starts
    past the end (or asks for the last 0 bytes)."""
    header = request.headers.get("range")
    if header is None:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None  # the client holds other bytes: it gets the whole file
    match = _RANGE.fullmatch(header)
    if match is None or (not match[1] and not match[2]):
        return None  # several ranges, or another unit: answered with the whole file
    if not match[1]:  # the last n bytes
        last = int(match[2])
        if last == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return ByteRange(max(size - last, 0), size - 1)
    start = int(match[1])
    if match[2] and int(match[2]) < start:
        return None  # not a valid range: ignored
    if start >= size:
        raise _unsatisfiable(header, size)
    end = int(match[2]) if match[2] else size - 1
    return ByteRange(start, min(end, size - 1))


def _unsatisfiable(header: str, size: int) -> HTTPException:
    return HTTPException(
        416,
        f"the range {header.strip()!r} is not within the file's {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def send(
    request: Request,
    *,
    size: int,
    etag: str | None,
    media_type: str,
    headers: dict[str, str],
    whole: Callable[[], Iterator[bytes]],
    part: Callable[[ByteRange], Iterator[bytes]],
    close: Callable[[], None] = lambda: None,
) -> Response:
    """The answer to a download: `HEAD` (headers only; `close` releases what was opened), the whole
    file (200) or one range of it (206). `headers` are the whole file's, with its Content-Length."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    if request.method == "HEAD":
        close()
        return Response(status_code=200, media_type=media_type, headers=headers)
    try:
        wanted = requested_range(request, size, etag)
    except HTTPException:
        close()
        raise
    if wanted is None:
        return StreamingResponse(whole(), media_type=media_type, headers=headers)
    headers |= {
        "Content-Length": str(wanted.length),
        "Content-Range": f"bytes {wanted.start}-{wanted.end}/{size}",
    }
    return StreamingResponse(part(wanted), status_code=206, media_type=media_type, headers=headers)


def slice_stream(chunks: Iterator[bytes], wanted: ByteRange) -> Iterator[bytes]:
    """The bytes of `wanted` out of a verified stream. The stream is read to its end (that is where
    it checks its sha256) and the last piece of the range is held back until then, so a corrupted
    stream cuts the response short instead of completing it."""
    offset, held = 0, b""
    for chunk in chunks:
        lo, hi = max(wanted.start - offset, 0), min(wanted.end + 1 - offset, len(chunk))
        offset += len(chunk)
        if lo >= hi:
            continue
        if held:
            yield held
        held = chunk[lo:hi]
    if held:
        yield held
