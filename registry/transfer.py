"""One resumable, checked download (used by RemoteRegistry's pulls): what arrived before a cut is
kept in the destination file, the next try asks for the rest with `Range` and `If-Range`, and the
whole file is checked against the sha256 the server sends."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx

from .errors import BlobCorrupted, RegistryError, ServiceUnavailable
from .progress import Reporter

CHUNK = 1024 * 1024
# Answers that say "not now": worth another try of a call that may be repeated.
RETRY_STATUSES = frozenset({502, 503, 504})


class TryAgain(Exception):
    """A try of a download that another try may cure: the error to raise if none is left."""

    def __init__(self, error: RegistryError, response: httpx.Response | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.response = response


def download(
    http: httpx.Client,
    url: str,
    dest: Path,
    reporter: Reporter,
    label: str,
    error_of: Callable[[httpx.Response], RegistryError],
    base_url: str,
) -> str:
    """Download `url` into `dest`, continuing after the bytes `dest` holds (a `Range` request with
    `If-Range`: a server whose file changed sends it whole), and check the whole against the
    sha256 the server sent; a mismatch removes `dest`. Hashing and writing run in a second
    thread, overlapped with receiving (hashlib and file writes release the GIL)."""
    digest = hashlib.sha256()
    held = dest.stat().st_size if dest.exists() else 0
    headers = {}
    if held:
        with dest.open("rb") as fh:  # the bytes kept from the cut transfer count towards the digest
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        headers["Range"] = f"bytes={held}-"
        etag = _etag_of(dest)
        if etag:
            headers["If-Range"] = etag
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
    failed: list[OSError] = []

    def consume(out: BinaryIO) -> None:
        try:
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)
                out.write(chunk)
        except OSError as exc:  # handed to the receiving thread, which raises it
            failed.append(exc)
            while chunks.get() is not None:  # drain, so the receiver never blocks on a full queue
                pass

    try:
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and held:  # `dest` holds more than the file: start over
                response.read()
                dest.unlink()
                raise TryAgain(ServiceUnavailable(f"{label}: the kept part is too long"), None)
            if response.is_error:
                response.read()
                if response.status_code in RETRY_STATUSES:
                    raise TryAgain(error_of(response), response)
                raise error_of(response)
            expected = response.headers.get("x-content-sha256")
            if response.status_code != 206:
                digest, held = hashlib.sha256(), 0  # the whole file: what was kept is dropped
            _remember_etag(dest, response.headers.get("etag"))
            size = int(response.headers.get("content-length", "0")) or None
            with (
                reporter.task(f"downloading {label}", total=size, unit="bytes") as advance,
                dest.open("ab" if held else "wb") as out,
            ):
                writer = threading.Thread(target=consume, args=(out,), name=f"write-{label}")
                writer.start()
                try:
                    # As received, not in 1 MB pieces: what came before a cut is kept.
                    for chunk in response.iter_bytes():
                        chunks.put(chunk)
                        advance(len(chunk))
                finally:
                    chunks.put(None)
                    writer.join()
                if failed:
                    raise failed[0]
    except httpx.TransportError as exc:
        error = ServiceUnavailable(f"download of {label} from {base_url} failed: {exc}")
        raise TryAgain(error, None) from None
    if expected is None or digest.hexdigest() != expected:
        dest.unlink(missing_ok=True)
        _remember_etag(dest, None)
        raise BlobCorrupted(
            f"{label} from {base_url} does not match its sha256 ({expected}); nothing written"
        )
    _remember_etag(dest, None)
    return expected


def _etag_file(dest: Path) -> Path:
    return dest.with_name(dest.name + ".etag")


def _etag_of(dest: Path) -> str | None:
    try:
        return _etag_file(dest).read_text().strip() or None
    except FileNotFoundError:
        return None


def _remember_etag(dest: Path, etag: str | None) -> None:
    """Keep the ETag of the file a `.part` holds the start of, for the `If-Range` of its resumption."""
    if etag is None:
        _etag_file(dest).unlink(missing_ok=True)
    else:
        _etag_file(dest).write_text(etag)
