"""The listing's compatibility filters and the facts in the version view, over HTTP."""

from __future__ import annotations

import pytest

from adapters.registry.engines import CompatFilter
from tests.engine_variants import variants  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def served(service, variants):  # noqa: F811
    for name in ("plain", "dora", "saved", "wide"):
        service.registry.push(variants[name], f"compat/{name}", task="chat")
    return service


def listed(http, **params) -> list[str]:
    response = http.get("/v1/adapters", params={"namespace": "compat", **params})
    assert response.status_code == 200, response.text
    return [a["name"].split("/")[1] for a in response.json()["adapters"]]


def test_query_parameters_filter_the_listing(served):
    with served.http(served.admin) as http:
        assert listed(http) == ["dora", "plain", "saved", "wide"]
        assert listed(http, engine="vllm") == ["plain"]
        assert listed(http, engine="vllm", max_rank=32) == ["plain", "wide"]
        assert listed(http, no_dora="true") == ["plain", "saved", "wide"]
        assert listed(http, no_modules_to_save="true", max_rank=16) == ["dora", "plain"]
        # Pages hold only matches: `next` comes from the filtered rows.
        page = http.get("/v1/adapters", params={"namespace": "compat", "no_dora": "true", "limit": 1}).json()
        assert [a["name"] for a in page["adapters"]] == ["compat/plain"] and page["next"] == "compat/plain"
        bad = http.get("/v1/adapters", params={"engine": "vllm", "max_rank": 24})
        assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["type"].endswith("/invalid-request")
        assert http.get("/v1/adapters", params={"engine": "tgi"}).status_code == 422
        version = http.get("/v1/adapters/compat/wide/versions/1").json()
        assert version["compat"]["max_rank"] == 32 and version["compat"]["use_dora"] is False


def test_remote_client_sends_the_filters(served):
    with served.client() as client:
        found = client.list(namespace="compat", compat=CompatFilter(engine="vllm", max_rank=32))
        assert [a.name for a in found] == ["compat/plain", "compat/wide"]
        assert client.resolve("compat/dora").compat["use_dora"] is True


def test_sync_and_export_through_the_api(served, tmp_path, variants):  # noqa: F811
    import boto3
    import torch
    from safetensors.torch import load_file

    from adapters.registry.export import export
    from adapters.registry.sync import SyncRequest, read_marker, sync

    out = tmp_path / "loras"
    with served.client() as client:
        report = sync(client, SyncRequest(out, namespace="compat", engine="vllm", served_base_model="org/m"))
        assert report.written == ["compat/plain:1"] and len(report.skipped) == 3
        again = sync(client, SyncRequest(out, namespace="compat", engine="vllm", served_base_model="org/m"))
        assert again.unchanged == ["compat/plain:1"] and again.written == []
        assert read_marker(out / "compat" / "plain")["served_base_model"] == "org/m"
        s3 = boto3.client("s3", endpoint_url=served.endpoint)
        s3.create_bucket(Bucket="api-exports")
        result = export(client, "compat/wide", "s3://api-exports/wide", endpoint_url=served.endpoint)
    assert result["ref"] == "compat/wide:1"
    s3.download_file("api-exports", "wide/adapter_model.safetensors", str(tmp_path / "w.safetensors"))
    sent = load_file(str(tmp_path / "w.safetensors"))
    pushed = load_file(str(variants["wide"] / "adapter_model.safetensors"))
    assert sent.keys() == pushed.keys() and all(torch.equal(sent[k], pushed[k]) for k in sent)


def test_the_resolver_serves_refs_from_the_api(service, variants, tmp_path):  # noqa: F811
    import torch
    from safetensors.torch import load_file

    from adapters.registry.lora_resolver import LoraCache, LoraResolver

    service.registry.push(
        variants["plain"], "served/plain", task="chat", base_model="org/base", aliases=["prod"]
    )
    digest = service.registry.resolve("served/plain").artifact_digest
    with service.client(service.token("read", namespace="served")) as client:
        resolver = LoraResolver(client, LoraCache(tmp_path / "cache", 10**9))
        resolved = resolver.resolve("org/base", "served/plain@prod")
        assert resolved is not None and resolved.path == tmp_path / "cache" / digest
        got = load_file(str(resolved.path / "adapter_model.safetensors"))
        pushed = load_file(str(variants["plain"] / "adapter_model.safetensors"))
        assert got.keys() == pushed.keys() and all(torch.equal(got[k], pushed[k]) for k in got)
        assert resolver.resolve("org/other", "served/plain@prod") is None
        assert resolver.resolve("org/base", "compat/plain") is None  # another namespace: not readable
