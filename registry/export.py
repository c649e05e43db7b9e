"""Export: a version's plain PEFT files under an S3 prefix, where LoRAX (`adapter_source="s3"`) and
KServe read adapters. The weights are written before the config, so a reader that finds the config
finds the weights it goes with; an export of the same version again writes the same bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import InvalidRequest, StorageError
from .progress import Reporter, SilentReporter
from .storage import sha256_file
from .sweep import temp_prefix
from .sync import CONFIG_FILE, rewrite_base_model

if TYPE_CHECKING:
    from .client_protocol import Registry


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise InvalidRequest(f"invalid S3 URL {url!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


def export(
    registry: Registry,
    ref: str,
    url: str,
    *,
    endpoint_url: str | None = None,
    served_base_model: str | None = None,
    reporter: Reporter | None = None,
    tmp_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the PEFT files of the version `ref` names to `url` (s3://bucket/prefix); returns what was
    written. The endpoint and credentials come from the AWS environment unless `endpoint_url` is given."""
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    reporter = reporter or SilentReporter()
    version = registry.resolve(ref)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("export"), dir=tmp_dir) as tmp:
        folder = Path(tmp) / "files"
        registry.pull(version.ref, folder, reporter=reporter)
        if served_base_model is not None:
            rewrite_base_model(folder / CONFIG_FILE, served_base_model)
        # Weights first, the config last (see the module's docstring).
        names = sorted((p.name for p in folder.iterdir()), key=lambda n: n == CONFIG_FILE)
        client = boto3.client("s3", endpoint_url=endpoint_url)
        written = []
        for name in names:
            path = folder / name
            key = f"{prefix}/{name}" if prefix else name
            digest, size = sha256_file(path)
            try:
                with reporter.task(f"uploading {name}", total=size, unit="bytes") as advance:
                    client.upload_file(str(path), bucket, key, Callback=advance)
            except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
                raise StorageError(f"cannot write s3://{bucket}/{key}: {exc}") from None
            written.append({"key": key, "size": size, "sha256": digest})
    return {"ref": version.ref, "url": f"s3://{bucket}/{prefix}".rstrip("/"), "files": written}
