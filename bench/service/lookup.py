"""Lookup by task at scale: 10k adapters and 100k versions in PostgreSQL, then `GET /v1/adapters` with
a task filter (first page of 50), over HTTP against `adapters serve` in its own process.

Reports latency percentiles for lookups by task, by task and base model, by tag, for a deep page
(cursor in the middle of a task), and for one adapter's detail; the same query timed in-process
(registry service, no HTTP) as a breakdown. Target: p99 <= 20 ms for lookup by task.

    .venv/bin/python bench/service/lookup.py [--adapters 10000] [--versions-per-adapter 10] [--requests 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from adapters.registry import models
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.storage import LocalBlobStorage
from bench.service.common import OUT, admin_token, api, bench_env, database, machine, percentiles

TASKS = 50
BASE_MODELS = ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B"]
TAGS = [f"tag{i}" for i in range(20)]
CONFIG = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}


def populate(url: str, n_adapters: int, per_adapter: int, seed: int = 0) -> None:
    """Bulk-load adapters, tags, blobs, ready versions and a `prod` alias per adapter."""
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        adapters = [
            {
                "namespace": f"team{i % 40}",
                "name": f"adapter-{i:05d}",
                "task": f"task{rng.randrange(TASKS)}",
                "base_model": rng.choice(BASE_MODELS),
                "last_version": per_adapter,
            }
            for i in range(n_adapters)
        ]
        ids = (
            conn.execute(
                sa.insert(models.Adapter).returning(models.Adapter.id, sort_by_parameter_order=True), adapters
            )
            .scalars()
            .all()
        )
        tags = [{"adapter_id": a, "tag": t} for a in ids for t in rng.sample(TAGS, 3)]
        conn.execute(sa.insert(models.AdapterTag), tags)
        blobs, versions = [], []
        for adapter_id in ids:
            for number in range(1, per_adapter + 1):
                digest = hashlib.sha256(f"{adapter_id}:{number}".encode()).hexdigest()
                blobs.append({"sha256": digest, "size": 1_000_000})
                versions.append({
                    "adapter_id": adapter_id, "number": number, "status": "ready", "source_digest": digest,
                    "source_size": 1_000_000, "artifact_digest": digest, "artifact_size": 1_000_000,
                    "codec": "raw", "codec_params": {}, "fidelity": {"lossless": True},
                    "requested": {"codec": "raw"}, "peft_config": CONFIG, "attempts": 1,
                })  # fmt: skip
        for start in range(0, len(blobs), 20_000):
            conn.execute(sa.insert(models.Blob), blobs[start : start + 20_000])
            conn.execute(sa.insert(models.Version), versions[start : start + 20_000])
        prod = conn.execute(
            sa.select(models.Version.adapter_id, models.Version.id).where(
                models.Version.number == per_adapter
            )
        ).all()
        conn.execute(
            sa.insert(models.Alias), [{"adapter_id": a, "name": "prod", "version_id": v} for a, v in prod]
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))  # what autovacuum would do soon after a bulk load
    engine.dispose()


def timed_requests(http: httpx.Client, make_request, n: int) -> list[float]:
    samples = []
    for i in range(n):
        path, params = make_request(i)
        started = time.perf_counter()
        response = http.get(path, params=params)
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--versions-per-adapter", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(1)
    results: dict = {"machine": machine(), "adapters": args.adapters}
    with database() as url, tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        populate(url, args.adapters, args.versions_per_adapter)
        results["versions"] = args.adapters * args.versions_per_adapter
        results["load_seconds"] = round(time.perf_counter() - started, 1)
        token = admin_token(url)

        # In-process: the registry service alone (one transaction, the same queries as the API).
        registry = LocalRegistry(Database(url), LocalBlobStorage(Path(home) / "blobs"))
        in_process = []
        for _ in range(args.requests):
            task = f"task{rng.randrange(TASKS)}"
            t0 = time.perf_counter()
            registry.list(task=task, limit=51)
            in_process.append(time.perf_counter() - t0)
        registry.close()
        results["service_by_task"] = percentiles(in_process)

        env = bench_env(url, "http://127.0.0.1:9", "unused", Path(home), db_pool_size="10")
        with (
            api(env) as server,
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as http,
        ):
            some = http.get("/v1/adapters", params={"task": "task1"}).json()["adapters"]
            middle = some[len(some) // 2]["name"]
            cases = {
                "http_by_task": lambda i: ("/v1/adapters", {"task": f"task{rng.randrange(TASKS)}"}),
                "http_by_task_and_base_model": lambda i: (
                    "/v1/adapters",
                    {"task": f"task{rng.randrange(TASKS)}", "base_model": rng.choice(BASE_MODELS)},
                ),
                "http_by_tag": lambda i: ("/v1/adapters", {"tag": rng.choice(TAGS)}),
                "http_by_task_next_page": lambda i: ("/v1/adapters", {"task": "task1", "after": middle}),
                "http_adapter_detail": lambda i: _detail(rng, args.adapters),
            }
            timed_requests(http, cases["http_by_task"], 200)  # warm up
            for name, make in cases.items():
                results[name] = percentiles(timed_requests(http, make, args.requests))
    target = results["http_by_task"]["p99_ms"]
    results["target"] = {"http_by_task_p99_ms": 20, "met": target <= 20}
    OUT.mkdir(exist_ok=True)
    (OUT / "service_lookup.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _detail(rng: random.Random, n: int) -> tuple[str, dict]:
    i = rng.randrange(n)
    return f"/v1/adapters/team{i % 40}/adapter-{i:05d}", {}


if __name__ == "__main__":
    main()
