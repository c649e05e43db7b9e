"""Content-addressed blob storage behind a small protocol: a local folder or S3.

A blob's key is its address, `sha256/<first two hex digits>/<hex>`, under the store's prefix. Writes are
atomic (a folder store renames a finished temporary file; S3 makes an object visible only when its
upload completes). Every read is verified: the bytes are hashed on the way to the caller's file, and a
mismatch raises BlobCorrupted and leaves nothing behind. Errors of the underlying client are translated
here into the registry's errors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from .errors import BlobCorrupted, BlobNotFound, ConfigurationError, StorageError
from .refs import check_digest
from .sweep import SweepReport, sweep_folder

# Called with the number of bytes just transferred.
ByteProgress = Callable[[int], None]
CHUNK = 1024 * 1024


class BlobStorage(Protocol):
    def exists(self, digest: str) -> bool:
        """True when the blob is stored (its content is not checked)."""
        ...

    def put_file(self, digest: str, path: Path, *, progress: ByteProgress | None = None) -> None:
        """Store the file at `path` under `digest` (a no-op when already stored)."""
        ...

    def get_file(self, digest: str, dest: Path, *, progress: ByteProgress | None = None) -> int:
        """Write the blob to `dest` after checking its sha256; returns its size in bytes. An OSError
        of writing `dest` (a full disk) propagates as it is: the caller's file, not the store, failed."""
        ...

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes in chunks, for streaming. The last chunk is held back until the sha256 is
        checked; a mismatch raises BlobCorrupted instead (a streaming reader aborts, so its client
        sees a short body, never a whole wrong one). Missing blobs raise BlobNotFound at once."""
        ...

    def delete(self, digest: str) -> None:
        """Remove the blob if present."""
        ...

    def ping(self) -> None:
        """Raise StorageError unless the store is reachable (readiness checks)."""
        ...

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob's digest and when it was written (seconds since the epoch), for
        garbage collection (gc.py)."""
        ...

    def sweep(self, older_than: float) -> SweepReport:
        """Remove what interrupted writes left behind more than `older_than` seconds ago (partial
        files, incomplete multipart uploads); finished blobs are never touched."""
        ...

    def describe(self) -> str:
        """Where the blobs live, for messages."""
        ...


def blob_key(digest: str) -> str:
    check_digest(digest)
    return f"sha256/{digest[:2]}/{digest}"


def sha256_file(path: Path) -> tuple[str, int]:
    """The sha256 hex digest and size of a file."""
    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: IO[bytes], dst: IO[bytes], progress: ByteProgress | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return digest.hexdigest(), size


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    with src:
        while chunk := src.read(CHUNK):
            yield chunk


def _verified(digest: str, chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """Pass chunks through, holding the last one back until the sha256 is checked."""
    hasher, held = hashlib.sha256(), b""
    for chunk in chunks:
        hasher.update(chunk)
        if held:
            yield held
        held = chunk
    actual = hasher.hexdigest()
    if actual != digest:
        raise BlobCorrupted(f"blob sha256:{digest} in {where} is corrupted (its bytes hash to {actual})")
    if held:
        yield held


# What `_temp_beside` makes: .<final name>.<random>.part
PART_FILE = re.compile(r"\..+\.[A-Za-z0-9_]+\.part")
DIGEST = re.compile(r"[0-9a-f]{64}")


def _temp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    return Path(name)


class LocalBlobStorage:
    """Blobs as files under a root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def describe(self) -> str:
        return str(self.root)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_file(self, digest: str, path: Path, *, progress: ByteProgress | None = None) -> None:
        final = self.path(digest)
        if final.is_file():
            return
        try:
            tmp = _temp_beside(final)
            try:
                with Path(path).open("rb") as src, tmp.open("wb") as dst:
                    actual, _ = _copy_hashing(src, dst, progress)
                    dst.flush()
                    os.fsync(dst.fileno())
                if actual != digest:
                    raise BlobCorrupted(
                        f"refusing to store {path} as sha256:{digest}: its sha256 is {actual}"
                    )
                tmp.replace(final)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write blob sha256:{digest} under {self.root}: {exc}") from exc

    def get_file(self, digest: str, dest: Path, *, progress: ByteProgress | None = None) -> int:
        source = self.path(digest)
        dest = Path(dest)
        try:
            src = source.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob sha256:{digest} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
        tmp = _temp_beside(dest)
        try:
            hasher, size = hashlib.sha256(), 0
            with src, tmp.open("wb") as dst:
                while True:
                    try:
                        chunk = src.read(CHUNK)
                    except OSError as exc:
                        raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
                    if not chunk:
                        break
                    hasher.update(chunk)
                    dst.write(chunk)  # an OSError here is the destination's
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
            actual = hasher.hexdigest()
            if actual != digest:
                raise BlobCorrupted(
                    f"blob sha256:{digest} in {self.root} is corrupted (its bytes hash to {actual})"
                )
            tmp.replace(dest)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        try:
            src = self.path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob sha256:{digest} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob sha256:{digest}: {exc}") from exc
        return _verified(digest, _read_chunks(src), self.describe())

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        try:
            folders = sorted(p for p in (self.root / "sha256").iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        for folder in folders:
            for path in folder.iterdir():
                if DIGEST.fullmatch(path.name) and path.name.startswith(folder.name):
                    try:
                        yield path.name, path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted meanwhile

    def sweep(self, older_than: float) -> SweepReport:
        """Stale `.part` files of writes that never finished, in every fan-out folder."""
        report = SweepReport()
        try:
            folders = [p for p in (self.root / "sha256").iterdir() if p.is_dir()]
        except FileNotFoundError:
            return report
        for folder in folders:
            report.extend(sweep_folder(folder, PART_FILE, older_than))
        return report

    def ping(self) -> None:
        if not (self.root.is_dir() or self.root.parent.is_dir()) or not os.access(
            self.root if self.root.is_dir() else self.root.parent, os.W_OK
        ):
            raise StorageError(f"blob folder {self.root} is not writable")


class S3BlobStorage:
    """Blobs as objects in an S3 bucket (AWS, MinIO, or any S3-compatible store).

    The client has explicit timeouts and standard-mode retries; uploads and downloads above
    `multipart_threshold` go in parallel parts through boto3's transfer manager.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_attempts: int = 5,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 16 * 1024 * 1024,
        max_concurrency: int = 4,
        max_pool_connections: int = 32,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                max_pool_connections=max_pool_connections,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )

    def key(self, digest: str) -> str:
        return self.prefix + blob_key(digest)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _error(self, action: str, digest: str, exc: Exception) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return BlobNotFound(f"blob sha256:{digest} is missing from {self.describe()}")
            return StorageError(f"cannot {action} blob sha256:{digest} in {self.describe()}: {code or exc}")
        return StorageError(f"cannot {action} blob sha256:{digest} in {self.describe()}: {exc}")

    def _client_errors(self) -> tuple[type[Exception], ...]:
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, S3UploadFailedError, S3TransferFailedError)

    def exists(self, digest: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except self._client_errors() as exc:
            error = self._error("look up", digest, exc)
            if isinstance(error, BlobNotFound):
                return False
            raise error from exc
        return True

    def put_file(self, digest: str, path: Path, *, progress: ByteProgress | None = None) -> None:
        if self.exists(digest):
            return
        actual, _ = sha256_file(path)
        if actual != digest:
            raise BlobCorrupted(f"refusing to store {path} as sha256:{digest}: its sha256 is {actual}")
        extra: dict[str, Any] = {"ContentType": "application/octet-stream", "Metadata": {"sha256": digest}}
        try:
            self._client.upload_file(
                str(path),
                self.bucket,
                self.key(digest),
                ExtraArgs=extra,
                Config=self._transfer,
                Callback=progress,
            )
        except self._client_errors() as exc:
            raise self._error("upload", digest, exc) from exc

    def get_file(self, digest: str, dest: Path, *, progress: ByteProgress | None = None) -> int:
        dest = Path(dest)
        tmp = _temp_beside(dest)
        try:
            try:
                self._client.download_file(
                    self.bucket, self.key(digest), str(tmp), Config=self._transfer, Callback=progress
                )
            except self._client_errors() as exc:
                raise self._error("download", digest, exc) from exc
            actual, size = sha256_file(tmp)
            if actual != digest:
                raise BlobCorrupted(
                    f"blob sha256:{digest} in {self.describe()} is corrupted (its bytes hash to {actual})"
                )
            tmp.replace(dest)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
        except self._client_errors() as exc:
            raise self._error("download", digest, exc) from exc

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            except self._client_errors() as exc:
                raise self._error("download", digest, exc) from exc
            finally:
                body.close()

        return _verified(digest, chunks(), self.describe())

    def delete(self, digest: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        except self._client_errors() as exc:
            raise self._error("delete", digest, exc) from exc

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        start = self.prefix + "sha256/"
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            ):
                for obj in page.get("Contents", []):
                    digest = obj["Key"].rsplit("/", 1)[-1]
                    if DIGEST.fullmatch(digest) and obj["Key"] == self.key(digest):
                        yield digest, obj["LastModified"].timestamp()
        except self._client_errors() as exc:
            raise StorageError(f"cannot list blobs in {self.describe()}: {exc}") from exc

    def sweep(self, older_than: float) -> SweepReport:
        """Abort multipart uploads under the prefix started more than `older_than` seconds ago: a
        killed upload leaves its parts stored (and billed) until someone does."""
        report = SweepReport()
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            stale = [u for page in pages for u in page.get("Uploads", []) if u["Initiated"] < cutoff]
        except self._client_errors() as exc:
            report.errors.append(f"cannot list multipart uploads in {self.describe()}: {exc}")
            return report
        for upload in stale:
            where = f"s3://{self.bucket}/{upload['Key']}#{upload['UploadId']}"
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            except self._client_errors() as exc:
                report.errors.append(f"cannot abort {where}: {exc}")
                continue
            report.removed.append(where)
        return report

    def ping(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._client_errors() as exc:
            raise StorageError(f"cannot reach {self.describe()}: {exc}") from exc


def storage_from_url(url: str) -> BlobStorage:
    """`s3://bucket/prefix` (endpoint from AWS_ENDPOINT_URL, credentials from the AWS chain),
    `file:///path`, or a plain folder path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigurationError(f"invalid storage URL {url!r}: expected s3://bucket/prefix")
        return S3BlobStorage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalBlobStorage(parsed.path)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalBlobStorage(url)
    raise ConfigurationError(
        f"unsupported storage URL {url!r}: use a folder path, file:///path or s3://bucket/prefix"
    )
