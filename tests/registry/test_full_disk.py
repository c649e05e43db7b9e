"""A pull that cannot write its files (a full disk, a quota, a file size limit) ends with one line
naming the folder and leaves nothing half-written: neither the output nor a staging folder beside it.

The write errors are real: `adapters pull` runs in a subprocess whose file size limit (RLIMIT_FSIZE)
is below the size of the adapter's weights, so writing them fails with EFBIG, as a full disk fails
with ENOSPC."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.registry.client import LocalRegistry
from adapters.registry.settings import Settings
from tests.api.conftest import running_service

ADAPTERS = str(Path(sys.executable).parent / "adapters")
LIMIT = 2048  # bytes: the config (about 1.2 kB) fits, the weights (4.6 kB) do not


def _limited() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _pull(env: dict[str, str], ref: str, out: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERS_")}
    return subprocess.run(
        [ADAPTERS, "pull", ref, "-o", str(out)],
        check=False,
        env=clean | env,
        preexec_fn=_limited,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


@pytest.mark.parametrize("cached", [True, False], ids=["from-the-cache", "reconstructing"])
def test_an_embedded_pull_that_cannot_write_says_so_in_one_line(adapter_dir, tmp_path, cached):
    home = tmp_path / "home"
    settings = Settings(home=home)
    with LocalRegistry.from_settings(settings) as registry:  # kept open: its SQLite files stay in place
        registry.push(adapter_dir, "acme/x", task="t")
        if cached:
            registry.pull("acme/x", tmp_path / "first")
        out = tmp_path / "out"
        pulled = _pull({"ADAPTERS_HOME": str(home)}, "acme/x", out)
    assert pulled.returncode == 1, pulled.stderr
    if cached:  # the cache holds the files: writing the output fails
        assert pulled.stderr == f"Error: cannot write {out}: File too large; nothing was written there\n"
    else:  # reconstructing into the cache fails first
        cache = settings.cache_dir
        assert pulled.stderr == f"Error: cannot write reconstructed files under {cache}: File too large\n"
        assert [p.name for p in cache.iterdir()] == []  # no staging folder left in the cache
    _nothing_left(out)


def test_a_remote_pull_that_cannot_write_says_so_in_one_line(pg_url, s3_endpoint, adapter_dir, tmp_path):
    with running_service(pg_url, s3_endpoint, tmp_path / "home") as service:
        service.client().push(adapter_dir, "acme/x", task="t")
        out = tmp_path / "out"
        env = {"ADAPTERS_URL": service.url, "ADAPTERS_TOKEN": service.admin, "ADAPTERS_HOME": str(tmp_path)}
        pulled = _pull(env, "acme/x", out)
    assert pulled.returncode == 1, pulled.stderr
    assert pulled.stderr == f"Error: cannot write {out}: File too large; nothing was written there\n"
    _nothing_left(out)
