"""The REST API over HTTP: lookup and paging, versions, aliases, yank, downloads, problems, operations."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx
import pytest

from adapters.api.problems import problem_types
from adapters.compress.peft_io import CONFIG_FILE, SAFETENSORS_FILE
from adapters.registry.errors import error_classes
from tests.factories import adapter_variants

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def populated(service, adapter_dir, tmp_path_factory):
    """Seven adapters over two tasks, two base models and a tag; acme/a0 has three versions."""
    dirs = adapter_variants(adapter_dir, tmp_path_factory.mktemp("variants"), 9)
    client = service.client()
    for i in range(7):
        client.push(
            dirs[i],
            f"{'acme' if i < 5 else 'beta'}/a{i}",
            task="support" if i % 2 == 0 else "summarize",
            base_model="llama-8b" if i < 4 else "mistral-7b",
            tags=["en"] if i in (0, 3, 6) else [],
        )
    client.push(dirs[7], "acme/a0", aliases=["prod"])
    client.push(dirs[8], "acme/a0")
    return dirs


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == f"https://adapters.dev/problems/{code}" and body["code"] == code
    assert body["status"] == status and body["title"] and body["instance"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_lookup_by_task_base_model_and_tag_pages_through_names(service, populated):
    with service.http(service.admin) as http:
        support = http.get("/v1/adapters", params={"task": "support"}).json()
        assert [a["name"] for a in support["adapters"]] == ["acme/a0", "acme/a2", "acme/a4", "beta/a6"]
        assert support["next"] is None
        both = http.get("/v1/adapters", params={"task": "support", "base_model": "llama-8b"}).json()
        assert [a["name"] for a in both["adapters"]] == ["acme/a0", "acme/a2"]
        tagged = http.get("/v1/adapters", params={"tag": "en", "namespace": "acme"}).json()
        assert [a["name"] for a in tagged["adapters"]] == ["acme/a0", "acme/a3"]
        seen, after = [], None
        while True:
            page = http.get("/v1/adapters", params={"limit": 3, **({"after": after} if after else {})}).json()
            assert len(page["adapters"]) <= 3
            seen += [a["name"] for a in page["adapters"]]
            after = page["next"]
            if after is None:
                break
        assert seen == sorted(seen) and len(seen) == 7
        a0 = http.get("/v1/adapters/acme/a0").json()
        assert (a0["task"], a0["base_model"], a0["latest"], a0["versions"], a0["aliases"]) == (
            "support", "llama-8b", 3, 3, {"prod": 2},
        )  # fmt: skip


def test_versions_show_status_sizes_and_fidelity(service, populated):
    with service.http(service.admin) as http:
        page = http.get("/v1/adapters/acme/a0/versions", params={"limit": 2}).json()
        assert [v["number"] for v in page["versions"]] == [1, 2] and page["next"] == 2
        rest = http.get("/v1/adapters/acme/a0/versions", params={"after": 2}).json()
        assert [v["number"] for v in rest["versions"]] == [3] and rest["next"] is None
        v2 = http.get("/v1/adapters/acme/a0/versions/2").json()
        assert v2["status"] == "ready" and v2["aliases"] == ["prod"]
        assert v2["artifact_size"] > 0 and v2["fidelity"]["lossless"] is True
        resolved = http.get("/v1/resolve", params={"ref": "acme/a0@prod"}).json()
        assert resolved["number"] == 2
        by_digest = http.get("/v1/resolve", params={"ref": f"acme/a0@sha256:{v2['source_digest']}"}).json()
        assert by_digest["number"] == 2
        _problem(http.get("/v1/adapters/acme/a0/versions/9"), 404, "version-not-found")
        _problem(http.get("/v1/resolve", params={"ref": "acme/a0@nope"}), 404, "alias-not-found")
        _problem(http.get("/v1/resolve", params={"ref": "not a ref"}), 400, "invalid-ref")
        _problem(http.get("/v1/adapters", params={"after": "no-slash"}), 400, "invalid-name")
        _problem(http.get("/v1/adapters/acme/missing"), 404, "adapter-not-found")


def test_aliases_move_and_go(service, populated):
    with service.http(service.admin) as http:
        moved = http.put("/v1/adapters/acme/a0/aliases/prod", json={"version": 3})
        assert moved.json() == {"adapter": "acme/a0", "alias": "prod", "version": 3, "previous": 2}
        by_ref = http.put("/v1/adapters/acme/a0/aliases/canary", json={"ref": "acme/a0@prod"}).json()
        assert by_ref["version"] == 3
        assert http.get("/v1/adapters/acme/a0/aliases").json() == {"canary": 3, "prod": 3}
        _problem(
            http.put("/v1/adapters/acme/a0/aliases/x", json={"ref": "acme/a1:1"}), 400, "invalid-request"
        )
        _problem(http.put("/v1/adapters/acme/a0/aliases/x", json={}), 400, "invalid-request")
        _problem(http.put("/v1/adapters/acme/a0/aliases/latest", json={"version": 1}), 400, "invalid-name")
        _problem(
            http.put("/v1/adapters/acme/a0/aliases/x", json={"version": 1, "extra": 1}),
            422,
            "validation-error",
        )
        assert http.delete("/v1/adapters/acme/a0/aliases/canary").json()["previous"] == 3
        _problem(http.delete("/v1/adapters/acme/a0/aliases/canary"), 404, "alias-not-found")
        http.put("/v1/adapters/acme/a0/aliases/prod", json={"version": 2})


def test_yank_and_unyank(service, populated):
    with service.http(service.admin) as http:
        yanked = http.post("/v1/adapters/acme/a0/versions/3/yank", json={"reason": "bad eval"}).json()
        assert yanked["yanked"] is True and yanked["yank_reason"] == "bad eval"
        assert http.get("/v1/resolve", params={"ref": "acme/a0"}).json()["number"] == 2
        assert http.post("/v1/adapters/acme/a0/versions/3/yank").json()["yanked"] is True  # no body
        assert http.delete("/v1/adapters/acme/a0/versions/3/yank").json()["yanked"] is False
        assert http.get("/v1/resolve", params={"ref": "acme/a0"}).json()["number"] == 3


def test_downloads_are_the_pulled_files_with_their_digests(service, populated, tmp_path):
    pulled = service.client().pull("acme/a0:2", tmp_path / "pulled")
    assert pulled.files == [CONFIG_FILE, SAFETENSORS_FILE]
    with service.http(service.admin) as http:
        base = "/v1/adapters/acme/a0/versions/2"
        for name in pulled.files:
            response = http.get(f"{base}/files/{name}")
            body = response.content
            assert body == (tmp_path / "pulled" / name).read_bytes()
            assert response.headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()
            assert response.headers["etag"] == f'"sha256:{hashlib.sha256(body).hexdigest()}"'
            assert int(response.headers["content-length"]) == len(body)
        assert http.get(f"{base}/files/{CONFIG_FILE}").headers["content-type"] == "application/json"
        archive = http.get(f"{base}/archive")
        assert archive.headers["content-type"] == "application/x-tar"
        assert int(archive.headers["content-length"]) == len(archive.content)
        with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
            assert tar.getnames() == [f"a0-2/{CONFIG_FILE}", f"a0-2/{SAFETENSORS_FILE}"]
            for name in pulled.files:
                assert tar.extractfile(f"a0-2/{name}").read() == (tmp_path / "pulled" / name).read_bytes()
        version = http.get(f"{base}").json()
        artifact = http.get(f"{base}/artifact")
        assert hashlib.sha256(artifact.content).hexdigest() == version["artifact_digest"]
        assert artifact.headers["x-content-sha256"] == version["artifact_digest"]
        _problem(http.get("/v1/adapters/acme/a0/versions/9/archive"), 404, "version-not-found")
        _problem(http.get(f"{base}/files/other.bin"), 422, "validation-error")


def test_downloads_of_a_version_that_is_not_ready_are_refused(service, adapter_dir, tmp_path):
    service.registry.push(
        adapter_variants(adapter_dir, tmp_path, 1)[0], "acme/pending", task="t", process=False
    )
    with service.http(service.admin) as http:
        body = _problem(
            http.get("/v1/adapters/acme/pending/versions/1/files/adapter_config.json"),
            409,
            "version-not-ready",
        )
        assert body["detail"] == "acme/pending:1 is pending"


def test_a_corrupted_cache_entry_aborts_the_download(service, populated):
    version = service.registry.resolve("acme/a1:1")
    with service.http(service.admin) as http:
        assert http.get("/v1/adapters/acme/a1/versions/1/files/adapter_model.safetensors").status_code == 200
        cached = service.registry.cache.root / version.artifact_digest / SAFETENSORS_FILE
        data = bytearray(cached.read_bytes())
        data[-1] ^= 0xFF
        cached.write_bytes(bytes(data))
        with pytest.raises(httpx.RemoteProtocolError):  # the body is cut short of its Content-Length
            http.get("/v1/adapters/acme/a1/versions/1/files/adapter_model.safetensors").read()
        good = http.get("/v1/adapters/acme/a1/versions/1/files/adapter_model.safetensors")  # rebuilt
        assert hashlib.sha256(good.content).hexdigest() == good.headers["x-content-sha256"]


def test_every_domain_error_has_a_stable_problem_type():
    types = problem_types()
    assert set(error_classes()) <= set(types)
    assert types["adapter-not-found"] == (404, "Adapter not found")
    assert types["forbidden"] == (403, "Permission denied")
    assert types["adapter-too-large"][0] == 413
    assert types["storage-error"][0] == 503


def test_unknown_routes_and_methods_are_problems_with_stable_types(service):
    with service.http(service.admin) as http:
        _problem(http.get("/v2/nothing"), 404, "not-found")
        wrong = http.patch("/v1/adapters")
        assert _problem(wrong, 405, "method-not-allowed")["title"] == "Method not allowed"
        assert wrong.headers["allow"] == "GET"
    assert problem_types()["method-not-allowed"] == (405, "Method not allowed")
    assert problem_types()["invalid-body"] == (400, "Invalid body")


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (b'{"reason": "caf\xe9"}', {"content-type": "application/json"}, "utf-8"),  # latin-1, not UTF-8
        (b'{"reason": "caf\xe9"}', {}, "Content-Type: application/json"),  # no content type at all
        (b'{"reason": ', {"content-type": "application/json"}, "not valid JSON"),
    ],
)
def test_a_body_that_is_not_json_is_400_invalid_body_as_documented(service, populated, body, headers, says):
    with service.http(service.admin) as http:
        answer = http.post("/v1/adapters/acme/a1/versions/1/yank", content=body, headers=headers)
        documented = http.get("/openapi.json").json()["paths"][
            "/v1/adapters/{namespace}/{name}/versions/{number}/yank"
        ]
    assert says in _problem(answer, 400, "invalid-body")["detail"]
    assert "400" in documented["post"]["responses"]
    assert service.registry.resolve("acme/a1:1").yanked is False  # nothing changed


def test_a_chunked_json_body_over_the_bound_is_413(service, populated):
    def chunks():
        yield b'{"ref": "'
        for _ in range(3):
            yield b"x" * 1_000_000
        yield b'"}'

    with service.http(service.admin) as http:
        huge = http.put("/v1/adapters/acme/a0/aliases/big", content=chunks())
        assert "content-length" not in huge.request.headers  # sent chunked
    _problem(huge, 413, "request-too-large")


def test_request_ids_are_echoed_or_made(service):
    with service.http(service.admin) as http:
        assert http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        made = http.get("/healthz", headers={"X-Request-ID": "bad id!"}).headers["x-request-id"]
        assert made != "bad id!" and len(made) == 32  # an unsafe id is replaced, not echoed


def test_health_readiness_and_metrics(service, populated):
    with service.http() as http:  # no token needed
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "storage": "ok"}
        http.get("/v1/adapters")
        metrics = http.get("/metrics").text
    assert 'adapters_http_requests_total{method="GET",route="/v1/adapters",status="401"}' in metrics
    assert (
        'adapters_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/adapters"}'
        in metrics
    )
    assert 'adapters_queue_jobs{status="pending"}' in metrics
    assert 'adapters_versions{status="ready"}' in metrics
    stored = next(line for line in metrics.splitlines() if line.startswith("adapters_blob_bytes "))
    assert float(stored.split()[1]) > 0
    assert 'adapters_job_duration_seconds_count{codec="raw",outcome="ready"}' in metrics


def test_readiness_fails_when_storage_is_gone(pg_url, s3_endpoint, tmp_path):
    from tests.api.conftest import running_service

    with running_service(pg_url, s3_endpoint, tmp_path / "home") as broken:
        broken.registry.storage.bucket = "no-such-bucket"
        with broken.http() as http:
            ready = http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert "storage-error" in ready.json()["checks"]["error"]


def test_the_openapi_document_describes_every_operation(service):
    with service.http() as http:
        schema = http.get("/openapi.json").json()
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) >= 18
    for path, method, op in operations:
        if not path.startswith("/v1/"):
            continue
        assert op["security"] == [{"HTTPBearer": []}], (path, method)
        assert op.get("summary"), (path, method)
        for status in ("401", "403", "422"):
            assert op["responses"][status]["content"] == {
                PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (path, method, status)
    upload = schema["paths"]["/v1/adapters/{namespace}/{name}/versions"]["post"]
    assert set(upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "metadata", "config", "weights", "file",
    }  # fmt: skip
    assert {"Problem", "PushMetadata", "VersionView", "AdapterPage"} <= set(schema["components"]["schemas"])


def test_every_route_needs_a_token(service):
    with service.http() as http:
        schema = http.get("/openapi.json").json()
        for path, item in schema["paths"].items():
            if not path.startswith("/v1/"):
                continue
            concrete = (
                path.replace("{namespace}", "acme").replace("{name}", "a0").replace("{number}", "1")
                .replace("{alias}", "prod").replace("{filename}", CONFIG_FILE).replace("{token_id}", "0" * 12)
            )  # fmt: skip
            for method in item:
                response = http.request(method.upper(), concrete, params={"ref": "acme/a0"})
                if method == "head":  # the GET's problem without its body
                    assert response.status_code == 401 and response.headers["content-type"] == PROBLEM
                else:
                    _problem(response, 401, "unauthenticated")
                assert response.headers["www-authenticate"] == "Bearer"


def test_json_bodies_are_bounded(service, populated):
    with service.http(service.admin) as http:
        huge = http.put("/v1/adapters/acme/a0/aliases/big", content=b'{"ref": "' + b"x" * 2_000_000 + b'"}')
    assert huge.status_code == 413 and huge.json()["code"] == "request-too-large"
