"""The blob store a storage URL names: a folder (storage.py) or an S3 bucket (s3_storage.py)."""

from __future__ import annotations

from urllib.parse import urlparse

from .errors import ConfigurationError
from .s3_storage import S3BlobStorage
from .storage import BlobStorage, LocalBlobStorage


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
