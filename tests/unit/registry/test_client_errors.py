"""How the client turns odd registry answers into errors, over httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from lazyimage.errors import (
    InvalidReferenceError,
    NotFoundError,
    RangeNotSupportedError,
    RegistryError,
    UnavailableError,
    VerificationError,
)
from lazyimage.oci import sha256_digest
from lazyimage.registry import Reference, RegistryClient, RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REF = Reference.parse("r.example/app:1")
DIGEST = "sha256:" + "c" * 64
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001, total_timeout=5.0)

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> RegistryClient:
    return RegistryClient(retry=FAST, transport=httpx.MockTransport(handler))


async def test_transport_errors_become_unavailable_after_the_bound() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    async with _client(handler) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_manifest(REF)
    assert len(calls) == 3
    assert "ReadTimeout" in str(caught.value) and "3 attempts" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert caught.value.registry == "r.example" and caught.value.repository == "app"
    assert str(calls[0].url) == "https://r.example/v2/app/manifests/1"


async def test_other_client_errors_keep_their_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errors": [{"code": "NAME_INVALID", "message": "bad"}]})

    async with _client(handler) as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_manifest(REF)
    assert caught.value.status == 400
    assert "NAME_INVALID: bad" in str(caught.value)


async def test_range_ignored_by_the_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 1000)

    async with _client(handler) as client:
        with pytest.raises(RangeNotSupportedError, match="range 10-19"):
            await client.read_range(REF, DIGEST, 10, 10)


async def test_range_answered_with_another_range() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"y" * 10, headers={"Content-Range": "bytes 0-9/1000"})

    async with _client(handler) as client:
        with pytest.raises(RangeNotSupportedError, match="bytes 0-9/1000"):
            await client.read_range(REF, DIGEST, 10, 10)


async def test_short_range_body_is_retried() -> None:
    bodies = [b"z" * 5, b"z" * 10]

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Range": "bytes 10-19/1000"}
        return httpx.Response(206, content=bodies.pop(0), headers=headers)

    async with _client(handler) as client:
        assert await client.read_range(REF, DIGEST, 10, 10) == b"z" * 10
    assert bodies == []


async def test_oversized_manifest_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (4 << 20) + b"{}")

    async with _client(handler) as client:
        with pytest.raises(RegistryError, match="larger than"):
            await client.get_manifest(REF)


async def test_manifest_digest_header_must_match() -> None:
    body = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Docker-Content-Digest": DIGEST})

    async with _client(handler) as client:
        with pytest.raises(VerificationError, match="registry says"):
            await client.get_manifest(REF)


async def test_media_type_falls_back_to_the_document() -> None:
    body = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "text/plain"})

    async with _client(handler) as client:
        fetched = await client.get_manifest(REF)
    assert fetched.media_type == "application/vnd.oci.image.index.v1+json"
    assert fetched.digest == sha256_digest(body)


async def test_redirect_loops_are_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": str(request.url)})

    async with _client(handler) as client:
        with pytest.raises(RegistryError, match="more than 5 redirects") as caught:
            await client.get_blob(REF, DIGEST)
    assert caught.value.what == f"blob {DIGEST}"


async def test_not_found_names_the_blob() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "gone"}]})

    async with _client(handler) as client:
        with pytest.raises(NotFoundError, match=f"blob {DIGEST} from r.example/app"):
            await client.get_blob(REF, DIGEST)


async def test_docker_hub_is_reached_at_its_api_host() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(404)

    async with _client(handler) as client:
        with pytest.raises(NotFoundError):
            await client.get_manifest(Reference.parse("busybox"))
    assert hosts == ["registry-1.docker.io"]


async def test_malformed_digests_never_reach_the_network() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    async with _client(handler) as client:
        for digest in ("sha256:../../etc", "md5:" + "0" * 32, ""):
            with pytest.raises(InvalidReferenceError):
                await client.read_range(REF, digest, 0, 1)
            with pytest.raises(InvalidReferenceError):
                await client.has_blob(REF, digest)
