"""Registry fixtures: blob stores (folder and S3 over HTTP)."""

from __future__ import annotations

import pytest

from adapters.registry.storage import S3BlobStorage


@pytest.fixture
def s3_storage(s3_endpoint: str, s3_bucket: str) -> S3BlobStorage:
    return S3BlobStorage(s3_bucket, "blobs/", endpoint_url=s3_endpoint)
