"""Many clients at once: `--clients` threads (100 by default), each with its own HTTP client and token,
start together; each pushes an adapter of its own, waits until a worker has made it ready, pulls it
back and checks the bytes, and pulls one shared adapter too. The API (`adapters serve`) queues the
pushes; `--workers` worker processes compress them with the default codec. The adapters name a base
model (`bench/base`) that no worker holds, so the run sets `worker_capability_wait_seconds=0`: a version
is compressed data-free at once instead of waiting 300 s for a worker with that model. Reports errors
(the target: none), the wall time, and latency percentiles per operation.

    .venv/bin/python -m bench.service.concurrency [--clients 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    percentiles,
    s3_server,
    workers,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results: dict = {"machine": machine(), "clients": args.clients, "workers": args.workers}
    with database() as url, s3_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bucket = make_bucket(endpoint)
        sources = [
            make_adapter(work / f"src-{i}", layers=2, dim=256, rank=8, seed=i)
            for i in range(args.clients + 1)
        ]
        env = bench_env(
            url,
            endpoint,
            bucket,
            work / "server",
            compression="queue",
            worker_poll_seconds="0.1",
            # No worker holds bench/base: compress data-free now rather than wait for one.
            worker_capability_wait_seconds="0",
        )
        token = admin_token(url)
        with api(env) as server, workers(env, args.workers):
            with RemoteRegistry(server.url, token) as admin:
                base = admin.push(sources[-1], "shared/base", task="bench").version
                admin.wait(base.ref, timeout=120)
                tokens = [
                    admin.create_token(f"client-{i}", "write", namespace=f"team{i}").secret
                    for i in range(args.clients)
                ]
                reader = admin.create_token("reader", "read").secret
            barrier = threading.Barrier(args.clients)
            timings: dict[str, list[float]] = defaultdict(list)
            errors: list[str] = []
            lock = threading.Lock()

            def client(i: int) -> None:
                def timed(op: str, fn):
                    started = time.perf_counter()
                    value = fn()
                    with lock:
                        timings[op].append(time.perf_counter() - started)
                    return value

                try:
                    with (
                        RemoteRegistry(server.url, tokens[i]) as mine,
                        RemoteRegistry(server.url, reader) as shared,
                    ):
                        barrier.wait()
                        pushed = timed(
                            "push", lambda: mine.push(sources[i], f"team{i}/adapter", task="bench")
                        )
                        ready = timed("wait_ready", lambda: mine.wait(pushed.version.ref, timeout=600))
                        assert ready.status == "ready", ready
                        out = work / f"out-{i}"
                        timed("pull_own", lambda: mine.pull(ready.ref, out))
                        original = (sources[i] / "adapter_model.safetensors").read_bytes()
                        assert len((out / "adapter_model.safetensors").read_bytes()) >= len(original) - 1024
                        timed("pull_shared", lambda: shared.pull("shared/base", work / f"shared-{i}"))
                        timed("list", lambda: shared.list(task="bench"))
                except Exception:  # noqa: BLE001 - every failure of a client is counted and shown
                    with lock:
                        errors.append(traceback.format_exc(limit=3))

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client, range(args.clients)))
            results["wall_s"] = round(time.perf_counter() - started, 2)
            with RemoteRegistry(server.url, token) as admin:
                listed = admin.list(task="bench")
    results["errors"] = len(errors)
    results["error_samples"] = errors[:3]
    results["adapters_listed"] = len(listed)
    for op, samples in timings.items():
        results[op] = percentiles(samples)
    results["target"] = {"errors": 0, "met": not errors and len(listed) == args.clients + 1}
    OUT.mkdir(exist_ok=True)
    (OUT / "service_concurrency.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
