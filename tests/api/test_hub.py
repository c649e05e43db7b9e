"""The Hugging Face Hub-compatible read API, through the real `huggingface_hub` client and PEFT against
`adapters serve` on loopback: revisions, files, errors, tokens, ranges and a resumed download."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from peft import PeftModel

from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from tests.factories import make_adapter, tiny_llama, token_batch
from tests.proxy import CuttingProxy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hub(service, adapter_dir, other_adapter_dir):
    """hub/raw: version 1 (alias prod) and version 2 (the latest); a read token for the namespace."""
    first = service.registry.push(adapter_dir, "hub/raw", task="support", aliases=["prod"], codec="raw")
    second = service.registry.push(other_adapter_dir, "hub/raw", codec="raw")
    token = service.token("read", namespace="hub", name="hub-reader")
    return first.version, second.version, token


def _sha256(service, ref: str) -> str:
    """The sha256 of the weights file the registry serves for `ref`."""
    _, files = service.registry.open_files(ref)
    files.close()
    return files.files[SAFETENSORS_FILE].sha256


def _outputs(folder: str | Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(tiny_llama(0), str(folder)).eval()
    with torch.no_grad():
        return model(token_batch()).logits


def test_snapshot_download_by_alias_gives_files_peft_loads_unchanged(service, hub, adapter_dir, tmp_path):
    first, _, token = hub
    folder = snapshot_download(
        repo_id="hub/raw", revision="prod", endpoint=service.url, token=token, cache_dir=tmp_path
    )
    assert sorted(p.name for p in Path(folder).iterdir()) == [CONFIG_FILE, SAFETENSORS_FILE]
    assert Path(folder).name == first.source_digest[:40]  # the snapshot is named by the commit id
    service.registry.pull("hub/raw@prod", tmp_path / "pulled")
    for name in (CONFIG_FILE, SAFETENSORS_FILE):  # the files `adapters pull` writes
        assert (Path(folder) / name).read_bytes() == (tmp_path / "pulled" / name).read_bytes()
    assert torch.equal(_outputs(folder), _outputs(adapter_dir))


def test_a_revision_is_a_number_an_alias_main_a_digest_or_the_commit(service, hub, tmp_path):
    first, second, token = hub
    api = HfApi(endpoint=service.url, token=token)
    one, two = first.source_digest[:40], second.source_digest[:40]
    revisions = {
        "1": one,
        "prod": one,
        f"sha256:{first.source_digest}": one,
        first.source_digest: one,
        one: one,
        "2": two,
        "main": two,
        two: two,
    }
    for revision, commit in revisions.items():
        assert api.model_info("hub/raw", revision=revision).sha == commit, revision
    assert api.model_info("hub/raw").sha == two  # no revision: main
    assert sorted(api.list_repo_files("hub/raw", revision="prod")) == [CONFIG_FILE, SAFETENSORS_FILE]
    info = api.model_info("hub/raw", revision="1", files_metadata=True)
    weights = next(s for s in info.siblings if s.rfilename == SAFETENSORS_FILE)
    pulled = service.registry.pull("hub/raw:1", tmp_path / "pulled")
    data = (tmp_path / "pulled" / SAFETENSORS_FILE).read_bytes()
    assert weights.lfs.sha256 == hashlib.sha256(data).hexdigest() and weights.size == len(data)
    assert pulled.version.number == 1
    for revision in ("main", f"sha256:{second.source_digest}"):
        path = hf_hub_download(
            "hub/raw", SAFETENSORS_FILE, revision=revision, endpoint=service.url, token=token,
            cache_dir=tmp_path / "hf",
        )  # fmt: skip
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == _sha256(service, "hub/raw:2")
    listed = {e.path: e for e in api.list_repo_tree("hub/raw", revision="prod", expand=True)}
    weights = listed[SAFETENSORS_FILE]
    assert weights.lfs.sha256 == _sha256(service, "hub/raw:1") and weights.last_commit.oid == one


def test_missing_repositories_revisions_and_files_raise_the_clients_errors(service, hub, tmp_path):
    _, _, token = hub
    api = HfApi(endpoint=service.url, token=token)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("hub/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("hub/nothing", CONFIG_FILE, endpoint=service.url, token=token, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):  # a base model's id, outside the naming rule
        hf_hub_download(
            "Org/Model-7B", "config.json", endpoint=service.url, token=service.admin, cache_dir=tmp_path
        )
    for revision in ("staging", "99", "0" * 40, "sha256:" + "0" * 64):
        with pytest.raises(RevisionNotFoundError):
            api.model_info("hub/raw", revision=revision)
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download(
                "hub/raw",
                CONFIG_FILE,
                revision=revision,
                endpoint=service.url,
                token=token,
                cache_dir=tmp_path,
            )
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("hub/raw", "pytorch_model.bin", endpoint=service.url, token=token, cache_dir=tmp_path)
    assert not api.file_exists("hub/raw", "pytorch_model.bin")
    assert api.file_exists("hub/raw", SAFETENSORS_FILE, revision="prod")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as http:
        missing = http.get("/hub/raw/resolve/main/pytorch_model.bin")
        assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "file-not-found"
        head = http.head("/hub/raw/resolve/staging/adapter_config.json")
        assert head.status_code == 404 and head.headers["x-error-code"] == "RevisionNotFound"


def test_without_a_token_a_private_registry_answers_401(service, hub, tmp_path):
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=service.url, token=False).model_info("hub/raw")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as download:
        hf_hub_download("hub/raw", CONFIG_FILE, endpoint=service.url, token=False, cache_dir=tmp_path)
    assert download.value.response.status_code == 401
    other = service.token("read", namespace="elsewhere", name="other-reader")
    with pytest.raises(RepositoryNotFoundError) as forbidden:
        hf_hub_download("hub/raw", CONFIG_FILE, endpoint=service.url, token=other, cache_dir=tmp_path)
    assert forbidden.value.response.status_code == 403


def test_resolve_answers_head_and_single_ranges_with_the_hub_headers(service, hub):
    first, _, token = hub
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as http:
        whole = http.get("/hub/raw/resolve/prod/adapter_model.safetensors")
        data, sha = whole.content, hashlib.sha256(whole.content).hexdigest()
        head = http.head("/hub/raw/resolve/prod/adapter_model.safetensors")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["etag"] == f'"{sha}"' and head.headers["content-length"] == str(len(data))
        assert head.headers["x-linked-size"] == str(len(data))
        assert head.headers["x-repo-commit"] == first.source_digest[:40]
        assert head.headers["accept-ranges"] == "bytes"
        part = http.get("/hub/raw/resolve/1/adapter_model.safetensors", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        tail = http.get("/hub/raw/resolve/1/adapter_model.safetensors", headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == data[-7:]
        past = http.get(
            "/hub/raw/resolve/1/adapter_model.safetensors", headers={"Range": f"bytes={len(data)}-"}
        )
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
        assert past.json()["code"] == "range-not-satisfiable"


def test_the_clients_resume_continues_a_partial_file_with_a_range(service, hub, tmp_path):
    _, _, token = hub
    url = f"{service.url}/hub/raw/resolve/prod/adapter_model.safetensors"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        data = http.get(url).content
    half = len(data) // 2
    partial = tmp_path / "weights.incomplete"
    partial.write_bytes(b"\0" * half)  # not the real bytes: only a ranged answer leaves them there
    with partial.open("ab") as f:
        http_get(
            url, f, resume_size=half, headers={"authorization": f"Bearer {token}"}, expected_size=len(data)
        )
    assert partial.read_bytes() == b"\0" * half + data[half:]


def test_hf_hub_download_resumes_a_cut_transfer_with_a_range(service, tmp_path, monkeypatch):
    # The client writes (and so can resume from) whole 10 MB chunks; this adapter is smaller.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    big = make_adapter(
        tmp_path / "big", seed=3, r=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
    )
    service.registry.push(big, "hub/big", task="support", codec="raw")
    size = (big / SAFETENSORS_FILE).stat().st_size
    assert size > 100_000
    proxy = CuttingProxy(int(service.url.rsplit(":", 1)[1]), cut_after=size // 2)
    try:
        path = hf_hub_download(
            "hub/big", SAFETENSORS_FILE, endpoint=f"http://127.0.0.1:{proxy.port}", token=service.admin,
            cache_dir=tmp_path / "hf",
        )  # fmt: skip
    finally:
        proxy.close()
    assert proxy.cuts == 1
    sent = b"".join(proxy.sent).lower()
    assert b"range: bytes=" in sent  # the retry asked for the rest only
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == _sha256(service, "hub/big:1")


def test_a_nola_version_serves_its_reconstruction_as_pull_writes_it(service, adapter_dir, tmp_path):
    params = {"ratio": 2, "max_weight_error": 1.0}  # a gate this loose passes: stored compressed
    pushed = service.registry.push(adapter_dir, "hub/small", task="support", codec="nola", params=params)
    assert pushed.version.codec == "nola"
    folder = snapshot_download("hub/small", endpoint=service.url, token=service.admin, cache_dir=tmp_path)
    service.registry.pull("hub/small", tmp_path / "pulled")
    for name in (CONFIG_FILE, SAFETENSORS_FILE):
        assert (Path(folder) / name).read_bytes() == (tmp_path / "pulled" / name).read_bytes()
    assert (Path(folder) / SAFETENSORS_FILE).read_bytes() != (adapter_dir / SAFETENSORS_FILE).read_bytes()


PEFT_THROUGH_HF_ENDPOINT = """
import sys, torch
from peft import PeftModel
from tests.factories import tiny_llama, token_batch
torch.set_num_threads(1)
model = PeftModel.from_pretrained(tiny_llama(0), "hub/raw", revision=sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(token_batch()).logits, sys.argv[2])
"""


def test_peft_from_pretrained_reads_the_registry_through_hf_endpoint(service, hub, adapter_dir, tmp_path):
    _, _, token = hub
    env = {
        **os.environ,
        "HF_ENDPOINT": service.url,
        "HF_TOKEN": token,
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "logits.pt"
    done = subprocess.run(
        [sys.executable, "-c", PEFT_THROUGH_HF_ENDPOINT, "prod", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(torch.load(out), _outputs(adapter_dir))
    refs = tmp_path / "hf" / "models--hub--raw" / "refs" / "prod"
    assert refs.read_text() == hub[0].source_digest[:40]  # the client recorded prod's commit
