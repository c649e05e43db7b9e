"""Pull throughput against a raw S3 GET of the same bytes.

One adapter (`--layers` x q/v LoRA at `--rank` on `--dim`: 64 MB by default) is pushed to
`adapters serve` (PostgreSQL, S3 on moto's server in its own process). Then, each `--repeat` times
(median reported):

  s3_get          boto3 get_object of the stored artifact, read to the end in memory
  s3_get_to_file  the same GET written to a file (the baseline: a raw GET that yields a file)
  pull_warm       `RemoteRegistry.pull` as the CLI does it (resolve, both files streamed, sha256
                  checked, written, moved into place), reconstruction served from the cache
  file_get_warm   a plain HTTP GET of adapter_model.safetensors from the cache
  pull_cold       the same pull with the server's cache emptied first (fetch from S3, verify,
                  decode, write, stream)
  artifact_get    the compressed artifact through the API (streamed from S3, verified)
  hub_snapshot    huggingface_hub's `snapshot_download` through the Hub-compatible API (model info,
                  tree, HEAD and GET of each file) into an empty Hugging Face cache
  range_half      a `Range` GET of the second half of adapter_model.safetensors (a resumed download)
  pull_cached     a pull whose files the client's download cache holds (HEADs and local copies)

Ratios are throughputs (bytes of what each moved per second) against both S3 baselines, measured in
the same run. Target: pull >= 80% of the raw GET (to a file, as a pull ends in files).

    .venv/bin/python -m bench.service.pull [--layers 16 --dim 4096 --rank 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from adapters.registry.client_cache import ClientCache
from adapters.registry.remote import RemoteRegistry
from bench.service.common import (
    OUT,
    admin_token,
    api,
    bench_env,
    database,
    machine,
    make_adapter,
    make_bucket,
    s3_client,
    s3_server,
)


def _timed(fn) -> tuple[float, int]:
    started = time.perf_counter()
    size = fn()
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    with database() as url, s3_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bucket = make_bucket(endpoint)
        source = make_adapter(work / "source", layers=args.layers, dim=args.dim, rank=args.rank)
        env = bench_env(
            url, endpoint, bucket, work / "server", max_upload_bytes=str(2**31), compression="inline"
        )
        token = admin_token(url)
        with api(env) as server, RemoteRegistry(server.url, token) as client:
            version = client.push(source, "bench/big", task="bench").version
            assert version.status == "ready", version
            key = f"registry/sha256/{version.artifact_digest[:2]}/{version.artifact_digest}"
            s3 = s3_client(endpoint)
            cache = work / "server" / "cache" / "reconstructed"
            base = f"/v1/adapters/bench/big/versions/{version.number}"
            headers = {"Authorization": f"Bearer {token}"}

            def s3_get() -> int:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                return sum(len(chunk) for chunk in body.iter_chunks(1024 * 1024))

            outputs = iter(range(10**6))

            def s3_get_to_file() -> int:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                size = 0
                with (work / f"raw-{next(outputs)}").open("wb") as out:
                    for chunk in body.iter_chunks(1024 * 1024):
                        out.write(chunk)
                        size += len(chunk)
                return size

            def pull() -> int:
                out = work / f"pulled-{next(outputs)}"
                client.pull("bench/big", out)
                return sum(p.stat().st_size for p in out.iterdir())

            def http_get(path: str):
                def get() -> int:
                    with httpx.stream("GET", f"{server.url}{path}", headers=headers, timeout=120) as response:
                        response.raise_for_status()
                        return sum(len(chunk) for chunk in response.iter_raw(1024 * 1024))

                return get

            def hub_snapshot() -> int:
                from huggingface_hub import snapshot_download

                folder = snapshot_download(
                    "bench/big", endpoint=server.url, token=token, cache_dir=work / f"hf-{next(outputs)}"
                )
                return sum(p.stat().st_size for p in Path(folder).iterdir())

            weights = f"{base}/files/adapter_model.safetensors"

            def range_half() -> int:
                size = int(httpx.head(f"{server.url}{weights}", headers=headers).headers["content-length"])
                ranged = {**headers, "Range": f"bytes={size // 2}-"}
                with httpx.stream("GET", f"{server.url}{weights}", headers=ranged, timeout=120) as response:
                    assert response.status_code == 206
                    return sum(len(chunk) for chunk in response.iter_raw(1024 * 1024))

            cached_client = RemoteRegistry(server.url, token, cache=ClientCache(work / "client-cache"))

            def pull_cached() -> int:
                out = work / f"pulled-{next(outputs)}"
                cached_client.pull("bench/big", out)
                return sum(p.stat().st_size for p in out.iterdir())

            def cold_pull() -> int:
                shutil.rmtree(cache, ignore_errors=True)
                return pull()

            cases = {
                "s3_get": s3_get,
                "s3_get_to_file": s3_get_to_file,
                "pull_warm": pull,
                "file_get_warm": http_get(f"{base}/files/adapter_model.safetensors"),
                "pull_cold": cold_pull,
                "artifact_get": http_get(f"{base}/artifact"),
                "hub_snapshot": hub_snapshot,
                "range_half": range_half,
                "pull_cached": pull_cached,
            }
            pull()  # warm the cache and the connections
            pull_cached()  # fill the client's download cache
            s3_get()
            for name, fn in cases.items():
                runs = [_timed(fn) for _ in range(args.repeat)]
                seconds = statistics.median(t for t, _ in runs)
                size = runs[0][1]
                results[name] = {
                    "bytes": size,
                    "median_s": round(seconds, 4),
                    "MB_per_s": round(size / seconds / 1e6, 1),
                }
                for path in work.glob("pulled-*"):
                    shutil.rmtree(path)
                for path in work.glob("raw-*"):
                    path.unlink()
                for path in work.glob("hf-*"):
                    shutil.rmtree(path)
    for name in (
        "pull_warm", "file_get_warm", "pull_cold", "artifact_get", "hub_snapshot", "range_half", "pull_cached"
    ):  # fmt: skip
        for baseline in ("s3_get", "s3_get_to_file"):
            results[name][f"vs_{baseline}"] = round(
                results[name]["MB_per_s"] / results[baseline]["MB_per_s"], 2
            )
    ratio = results["pull_warm"]["vs_s3_get_to_file"]
    results["target"] = {"pull_warm_vs_s3_get_to_file": 0.8, "met": ratio >= 0.8}
    OUT.mkdir(exist_ok=True)
    (OUT / "service_pull.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
