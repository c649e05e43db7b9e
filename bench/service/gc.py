"""Blob garbage collection over S3: how fast `collect_garbage` removes blobs that deleted versions
released, and objects stored without a row, on PostgreSQL and moto's S3 in its own process.

    python -m bench.service.gc [--released 2000 --orphans 500 --size 4096]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from adapters.registry import gc, models
from adapters.registry.db import Database
from adapters.registry.s3_storage import S3BlobStorage
from bench.service.common import OUT, database, machine, make_bucket, s3_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", type=int, default=2000, help="blob rows released by deleted versions")
    parser.add_argument("--orphans", type=int, default=500, help="stored objects without a row")
    parser.add_argument("--size", type=int, default=4096, help="bytes per blob")
    args = parser.parse_args()
    rng = random.Random(0)
    blobs = [rng.randbytes(args.size) for _ in range(args.released + args.orphans)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    os.environ |= {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with database() as url, s3_server() as endpoint:
        bucket = make_bucket(endpoint)
        storage = S3BlobStorage(bucket, "registry", endpoint_url=endpoint, max_pool_connections=32)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda item: storage._client.put_object(
                        Bucket=bucket, Key=storage.key(item[0]), Body=item[1]
                    ),
                    zip(digests, blobs, strict=True),
                )
            )
        db = Database(url)
        released = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
        with db.transaction() as session:
            session.execute(
                sa.insert(models.Blob),
                [{"sha256": d, "size": args.size, "released_at": released} for d in digests[: args.released]],
            )
        # Written just now: the orphans must be older than the grace period, so it is short here.
        time.sleep(2)
        started = time.perf_counter()
        dry = gc.collect_garbage(db, storage, grace_seconds=1, dry_run=True)
        dry_s = time.perf_counter() - started
        started = time.perf_counter()
        report = gc.collect_garbage(db, storage, grace_seconds=1)
        real_s = time.perf_counter() - started
        left = storage._client.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        db.dispose()
    removed = len(report.blobs) + len(report.orphans)
    results = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "released_rows": args.released,
        "orphan_objects": args.orphans,
        "blob_bytes": args.size,
        "dry_run_s": round(dry_s, 2),
        "dry_run_found": len(dry.blobs) + len(dry.orphans),
        "collect_s": round(real_s, 2),
        "removed": removed,
        "removed_per_s": round(removed / real_s, 1),
        "objects_left": left,
        "errors": len(report.errors),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "service_gc.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
