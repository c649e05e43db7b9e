"""Blob stores: a local folder and S3 over HTTP (moto's server), with every read verified."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest

from adapters.registry.errors import BlobCorrupted, BlobNotFound, ConfigurationError, InvalidRef, StorageError
from adapters.registry.s3_storage import S3BlobStorage
from adapters.registry.storage import LocalBlobStorage
from adapters.registry.storage_url import storage_from_url
from tests.conftest import free_port


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return LocalBlobStorage(tmp_path / "blobs")
    return request.getfixturevalue("s3_storage")


def _blob(tmp_path, data: bytes, name: str = "blob.bin"):
    path = tmp_path / name
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


def _overwrite(store, digest: str, data: bytes) -> None:
    """Change a stored blob behind the store's back."""
    if isinstance(store, LocalBlobStorage):
        store.path(digest).write_bytes(data)
    else:
        store._client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=data)


def test_round_trip_is_content_addressed(store, tmp_path):
    data = os.urandom(3000)
    digest, path = _blob(tmp_path, data)
    assert not store.exists(digest)
    sent: list[int] = []
    store.put_file(digest, path, progress=sent.append)
    assert store.exists(digest)
    assert sum(sent) == len(data)
    store.put_file(digest, path)  # storing known content again is a no-op
    received: list[int] = []
    assert store.get_file(digest, tmp_path / "out" / "copy.bin", progress=received.append) == len(data)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert sum(received) == len(data)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "copy.bin"]  # no temp files left
    if isinstance(store, LocalBlobStorage):
        assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest
    else:
        assert store.key(digest) == f"blobs/sha256/{digest[:2]}/{digest}"
    store.delete(digest)
    assert not store.exists(digest)


def test_missing_blob_is_an_error(store, tmp_path):
    dest = tmp_path / "dest" / "copy.bin"
    with pytest.raises(BlobNotFound, match="missing"):
        store.get_file("0" * 64, dest)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_corrupted_blob_is_an_error_never_data(store, tmp_path):
    digest, path = _blob(tmp_path, b"the real content")
    store.put_file(digest, path)
    _overwrite(store, digest, b"the fake content")
    dest = tmp_path / "dest" / "copy.bin"
    with pytest.raises(BlobCorrupted, match=f"sha256:{digest} .*corrupted"):
        store.get_file(digest, dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the partial download is gone too


def test_refuses_to_store_content_under_the_wrong_address(store, tmp_path):
    _, path = _blob(tmp_path, b"some bytes")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(BlobCorrupted, match="refusing"):
        store.put_file(wrong, path)
    assert not store.exists(wrong)


@pytest.mark.parametrize("digest", ["../../etc/passwd", "A" * 64, "a" * 63])
def test_addresses_must_be_sha256_digests(store, tmp_path, digest):
    with pytest.raises(InvalidRef):
        store.exists(digest)


def test_large_blobs_go_in_multipart_uploads(s3_endpoint, s3_bucket, tmp_path):
    store = S3BlobStorage(
        s3_bucket, endpoint_url=s3_endpoint, multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20
    )
    data = os.urandom(11 * 2**20)
    digest, path = _blob(tmp_path, data)
    store.put_file(digest, path)
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=s3_bucket, Key=store.key(digest))
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["Metadata"]["sha256"] == digest
    store.get_file(digest, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data


def test_unreachable_s3_is_a_storage_error(tmp_path):
    store = S3BlobStorage(
        "bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=1, max_attempts=1
    )
    digest, path = _blob(tmp_path, b"x")
    with pytest.raises(StorageError, match="cannot look up"):
        store.put_file(digest, path)
    with pytest.raises(StorageError, match="cannot download"):
        store.get_file(digest, tmp_path / "copy.bin")


def test_missing_bucket_is_a_storage_error(s3_endpoint, tmp_path):
    store = S3BlobStorage("no-such-bucket", endpoint_url=s3_endpoint, max_attempts=1)
    digest, path = _blob(tmp_path, b"x")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put_file(digest, path)


def test_storage_urls(tmp_path, monkeypatch):
    assert storage_from_url(str(tmp_path)).root == tmp_path
    assert storage_from_url(f"file://{tmp_path}").root == tmp_path
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = storage_from_url("s3://bucket/some/prefix/")
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    with pytest.raises(ConfigurationError, match="s3://bucket"):
        storage_from_url("s3:///prefix")
    with pytest.raises(ConfigurationError, match="unsupported"):
        storage_from_url("ftp://host/path")


def test_streaming_reads_are_verified_after_the_last_chunk(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    source = tmp_path / "blob"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store.put_file(digest, source)
    assert b"".join(store.iter_chunks(digest)) == data
    store.ping()
    with pytest.raises(BlobNotFound):
        store.iter_chunks("0" * 64)
    _overwrite(store, digest, data[:-1] + bytes([data[-1] ^ 1]))
    received = []
    with pytest.raises(BlobCorrupted):
        for chunk in store.iter_chunks(digest):
            received.append(chunk)
    assert sum(map(len, received)) < len(data)  # the last chunk is held back: the reader aborts short
