"""`HEAD` and single `Range` requests on every download route: the same headers as the GET without a
body, 206 with the asked part, 416 past the end, the whole file when a range cannot be honoured."""

from __future__ import annotations

import httpx
import pytest

ROUTES = ("files/adapter_model.safetensors", "files/adapter_config.json", "archive", "artifact")


@pytest.fixture(scope="module")
def http(service, adapter_dir):
    service.registry.push(adapter_dir, "ranges/a", task="support", codec="raw")
    with service.http(service.admin) as client:
        yield client


@pytest.mark.parametrize("route", ROUTES)
def test_head_answers_the_gets_headers_without_a_body(http, route):
    url = f"/v1/adapters/ranges/a/versions/1/{route}"
    whole, head = http.get(url), http.head(url)
    assert whole.status_code == head.status_code == 200 and head.content == b""
    for header in ("content-length", "content-type", "etag", "content-disposition"):
        assert head.headers[header] == whole.headers[header], header
    assert head.headers.get("x-content-sha256") == whole.headers.get("x-content-sha256")
    assert int(head.headers["content-length"]) == len(whole.content)
    assert head.headers["accept-ranges"] == whole.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("route", ROUTES)
def test_a_range_is_served_as_206_with_that_part(http, route):
    url = f"/v1/adapters/ranges/a/versions/1/{route}"
    data = http.get(url).content
    size = len(data)
    for header, part in (
        ("bytes=0-0", data[:1]),
        ("bytes=5-40", data[5:41]),
        (f"bytes={size // 2}-", data[size // 2 :]),
        ("bytes=-9", data[-9:]),
        (f"bytes=3-{size * 2}", data[3:]),  # an end past the file ends at the file's end
    ):
        answer = http.get(url, headers={"Range": header})
        assert answer.status_code == 206, header
        assert answer.content == part, header
        start = size - len(part) if header.startswith("bytes=-") else int(header[6:].split("-")[0])
        assert answer.headers["content-range"] == f"bytes {start}-{start + len(part) - 1}/{size}"
        assert answer.headers["content-length"] == str(len(part))


@pytest.mark.parametrize("route", ROUTES)
def test_ranges_that_cannot_be_honoured(http, route):
    url = f"/v1/adapters/ranges/a/versions/1/{route}"
    whole = http.get(url)
    size = len(whole.content)
    past = http.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["code"] == "range-not-satisfiable"
    for header in ("bytes=0-1,4-5", "pages=1-2", "bytes=9-3"):  # several, another unit, backwards
        answer = http.get(url, headers={"Range": header})
        assert answer.status_code == 200 and answer.content == whole.content, header
    stale = http.get(url, headers={"Range": "bytes=2-", "If-Range": '"sha256:' + "0" * 64 + '"'})
    assert stale.status_code == 200 and stale.content == whole.content  # the client's bytes are other
    fresh = http.get(url, headers={"Range": "bytes=2-", "If-Range": whole.headers["etag"]})
    assert fresh.status_code == 206 and fresh.content == whole.content[2:]


def test_head_of_a_missing_version_is_404_without_a_body(http):
    answer = http.head("/v1/adapters/ranges/a/versions/9/artifact")
    assert answer.status_code == 404 and answer.content == b""
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_range_of_a_corrupted_cache_entry_is_refused_then_rebuilt(service, http):
    url = "/v1/adapters/ranges/a/versions/1/files/adapter_model.safetensors"
    good = http.get(url).content
    version = service.registry.resolve("ranges/a:1")
    cached = service.registry.cache.root / version.artifact_digest / "adapter_model.safetensors"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # far from the range asked for: the whole file is checked all the same
    cached.write_bytes(bytes(data))
    with pytest.raises(httpx.RemoteProtocolError):  # cut short before any byte of the part
        http.get(url, headers={"Range": "bytes=0-99"}).read()
    rebuilt = http.get(url, headers={"Range": "bytes=0-99"})
    assert rebuilt.status_code == 206 and rebuilt.content == good[:100]
