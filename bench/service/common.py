"""What the service benchmarks share: a throwaway PostgreSQL database, an S3 endpoint (moto's server,
in its own process), the API served by `adapters serve` in its own process, and timing helpers."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

from adapters.registry.db import Database

PG_ADMIN_URL = os.environ.get("ADAPTERS_BENCH_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")
BIN = Path(sys.executable).parent
OUT = Path(__file__).resolve().parents[1] / "out"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated; dropped afterwards."""
    name = f"adapters_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    db.upgrade()
    db.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(ready_url, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 over HTTP, in its own process."""
    port = free_port()
    env = os.environ | {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
    with process([str(BIN / "moto_server"), "-p", str(port)], env, f"http://127.0.0.1:{port}/moto-api/"):
        yield f"http://127.0.0.1:{port}"


@dataclass
class Api:
    url: str
    env: dict[str, str]


def bench_env(database_url: str, endpoint: str, bucket: str, home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERS_")}
    env |= {
        "ADAPTERS_HOME": str(home),
        "ADAPTERS_DATABASE_URL": database_url,
        "ADAPTERS_STORAGE_URL": f"s3://{bucket}/registry",
        "ADAPTERS_LOG_LEVEL": "WARNING",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env |= {f"ADAPTERS_{k.upper()}": v for k, v in settings.items()}
    return env


@contextlib.contextmanager
def api(env: dict[str, str]) -> Iterator[Api]:
    """`adapters serve` in its own process."""
    port = free_port()
    with process(
        [str(BIN / "adapters"), "serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/healthz"
    ):
        yield Api(f"http://127.0.0.1:{port}", env)


@contextlib.contextmanager
def workers(env: dict[str, str], n: int) -> Iterator[list[subprocess.Popen]]:
    procs = [
        subprocess.Popen(
            [str(BIN / "adapters"), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of samples in seconds, as milliseconds."""
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "n": len(ordered),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "p50_ms": round(pick(0.50), 2),
        "p95_ms": round(pick(0.95), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def admin_token(database_url: str) -> str:
    from adapters.registry.client import LocalRegistry
    from adapters.registry.storage import LocalBlobStorage

    with LocalRegistry(Database(database_url), LocalBlobStorage("/nonexistent")) as registry:
        return registry.create_token("bench", "admin").secret


def make_adapter(path: Path, *, layers: int, dim: int, rank: int, seed: int = 0) -> Path:
    """A PEFT LoRA directory with random factors on q_proj and v_proj of `layers` layers (fp32)."""
    import json

    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, dim, generator=gen) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(dim, rank, generator=gen) * 0.02
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "bench/base",
        "task_type": "CAUSAL_LM",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def make_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
        config=Config(max_pool_connections=32),
    )
