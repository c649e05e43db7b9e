"""Blob storage in an S3 bucket (AWS, MinIO, or any S3-compatible store): the `BlobStorage` protocol
of storage.py, with the same keys and checks as the folder store; botocore's errors are translated
here into the registry's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BlobCorrupted, BlobNotFound, StorageError
from .storage import CHUNK, DIGEST, ByteProgress, blob_key, sha256_file, temp_beside, verified_chunks
from .sweep import SweepReport


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
        tmp = temp_beside(dest)
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

        return verified_chunks(digest, chunks(), self.describe())

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
