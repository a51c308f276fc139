"""How the client follows a registry's hosts.toml, over httpx.MockTransport: which host each
operation goes to, the API root, ``?ns=``, headers, and files that change while it runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from lazyimage.errors import ConfigError, RegistryError
from lazyimage.oci import OCI_MANIFEST, sha256_digest
from lazyimage.registry import Reference, RegistryClient, RegistryHosts, RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

MANIFEST = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'
MANIFEST_DIGEST = sha256_digest(MANIFEST)
BLOB = b"blob bytes"
BLOB_DIGEST = sha256_digest(BLOB)
FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001, total_timeout=5.0)

Handler = Callable[[httpx.Request], httpx.Response]


def _write(root: Path, directory: str, text: str) -> Path:
    (root / directory).mkdir(parents=True, exist_ok=True)
    path = root / directory / "hosts.toml"
    path.write_text(text)
    return path


def _registry(serving: dict[str, set[str]], seen: list[httpx.Request]) -> Handler:
    """Each host in ``serving`` answers for the paths under its API root named there."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        host = request.url.netloc.decode()
        path = request.url.path
        if path not in serving.get(host, set()):
            return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})
        if "/manifests/" in path:
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST})
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": f"{path}upload-1"})
        if request.method == "PUT":
            return httpx.Response(201)
        return httpx.Response(200, content=BLOB)

    return handler


def _client(root: Path, handler: Handler, recheck: float = 5.0) -> RegistryClient:
    hosts = RegistryHosts(root, strict=True, recheck=recheck)
    return RegistryClient(hosts=hosts, retry=FAST, transport=httpx.MockTransport(handler))


async def test_capabilities_decide_which_host_does_what(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "r.example",
        """
        server = "https://upstream.example"
        [host."https://pull-only.example/cache"]
          capabilities = ["pull"]
          [host."https://pull-only.example/cache".header]
            x-mirror-token = ["a", "b"]
        [host."https://resolver.example"]
          capabilities = ["pull", "resolve"]
        [host."https://pusher.example"]
          capabilities = ["push"]
        """,
    )
    seen: list[httpx.Request] = []
    serving = {
        "pull-only.example": {f"/cache/v2/app/blobs/{BLOB_DIGEST}"},
        "resolver.example": {"/v2/app/manifests/1"},
        "pusher.example": {"/v2/app/blobs/uploads/", "/v2/app/blobs/uploads/upload-1"},
    }
    ref = Reference.parse("r.example/app:1")
    async with _client(tmp_path, _registry(serving, seen)) as client:
        assert (await client.get_manifest(ref)).digest == MANIFEST_DIGEST
        tag_hosts = [r.url.host for r in seen]
        seen.clear()
        assert await client.get_blob(ref, BLOB_DIGEST) == BLOB
        blob_requests = list(seen)
        seen.clear()
        await client.push_blob(ref, BLOB, BLOB_DIGEST, len(BLOB))
        push_requests = list(seen)

    # A tag is never resolved by a pull-only host; a pushing-only host is never pulled from.
    assert tag_hosts == ["resolver.example"]
    (blob,) = blob_requests
    assert blob.url.host == "pull-only.example"
    # The URL's path is the API root, /v2 added; other hosts are told the registry's name.
    assert blob.url.path == f"/cache/v2/app/blobs/{BLOB_DIGEST}"
    assert blob.url.params["ns"] == "r.example"
    assert blob.headers.get_list("x-mirror-token") == ["a", "b"]
    # Pushes go to the first host that may push, and only to it (HEAD, POST, PUT).
    assert [(r.method, r.url.host) for r in push_requests] == [
        ("HEAD", "pusher.example"),
        ("POST", "pusher.example"),
        ("PUT", "pusher.example"),
    ]
    assert all("x-mirror-token" not in r.headers for r in push_requests)


async def test_hosts_are_tried_in_order_and_the_server_last(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "_default",
        """
        [host."https://first.example"]
        [host."https://second.example/v2/mirror"]
          override_path = true
        """,
    )
    seen: list[httpx.Request] = []
    serving = {"r.example:5000": {"/v2/app/manifests/1"}}
    ref = Reference.parse("r.example:5000/app:1")
    async with _client(tmp_path, _registry(serving, seen)) as client:
        await client.get_manifest(ref)
    assert [str(r.url) for r in seen] == [
        "https://first.example/v2/app/manifests/1?ns=r.example%3A5000",
        "https://second.example/v2/mirror/app/manifests/1?ns=r.example%3A5000",
        # The registry itself, without ns, with the retry policy (it answers at once here).
        "https://r.example:5000/v2/app/manifests/1",
    ]


async def test_no_host_that_may_resolve_is_an_error_naming_the_file(tmp_path: Path) -> None:
    hosts_file = _write(tmp_path, "r.example", 'capabilities = ["pull"]\n')
    seen: list[httpx.Request] = []
    async with _client(tmp_path, _registry({}, seen)) as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_manifest(Reference.parse("r.example/app:1"))
        # By digest, a pull-only host will do.
        digest_ref = Reference.parse(f"r.example/app@{MANIFEST_DIGEST}")
        with pytest.raises(RegistryError, match="not found"):
            await client.get_manifest(digest_ref)
    assert f"no host of the registry may resolve (hosts from {hosts_file})" in str(caught.value)
    assert [r.url.path for r in seen] == [f"/v2/app/manifests/{MANIFEST_DIGEST}"]


async def test_a_changed_file_applies_after_the_recheck_interval(tmp_path: Path) -> None:
    hosts_file = _write(tmp_path, "r.example", '[host."https://one.example"]\n')
    seen: list[httpx.Request] = []
    serving = {"r.example": {"/v2/app/manifests/1"}}
    ref = Reference.parse("r.example/app:1")
    async with _client(tmp_path, _registry(serving, seen), recheck=0.0) as client:
        await client.get_manifest(ref)
        hosts_file.write_text('[host."https://two.example"]\n')
        os.utime(hosts_file, ns=(1, 1))
        await client.get_manifest(ref)
        hosts_file.write_text("{not toml")
        # A strict source refuses the bad file (the agent's logs it and goes on).
        with pytest.raises(ConfigError, match="not valid TOML"):
            await client.get_manifest(ref)
    assert [r.url.host for r in seen] == ["one.example", "r.example", "two.example", "r.example"]


async def test_without_a_directory_for_it_a_registry_is_used_as_before(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    serving = {"registry-1.docker.io": {"/v2/library/app/manifests/1"}}
    async with _client(tmp_path, _registry(serving, seen)) as client:
        await client.get_manifest(Reference.parse("app:1"))
    assert [str(r.url) for r in seen] == ["https://registry-1.docker.io/v2/library/app/manifests/1"]


async def test_the_registrys_own_names_are_not_told_the_namespace(tmp_path: Path) -> None:
    """containerd's own example for docker.io: neither host is another registry's mirror."""
    _write(
        tmp_path,
        "docker.io",
        """
        server = "https://docker.io"
        [host."https://registry-1.docker.io"]
          capabilities = ["pull", "resolve"]
        """,
    )
    seen: list[httpx.Request] = []
    async with _client(tmp_path, _registry({}, seen)) as client:
        with pytest.raises(RegistryError, match="not found"):
            await client.get_manifest(Reference.parse("library/app:1"))
    assert [str(r.url) for r in seen] == [
        "https://registry-1.docker.io/v2/library/app/manifests/1",
        "https://docker.io/v2/library/app/manifests/1",
    ]


async def test_http_hosts_with_tls_settings_are_asked_in_https_unless_on_port_80(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        "r.example",
        """
        [host."http://a.example:5000"]
          skip_verify = true
        [host."http://b.example:80"]
          skip_verify = true
        [host."http://c.example:5000"]
        [host."http://d.example"]
          ca = []
          skip_verify = true
        """,
    )
    seen: list[httpx.Request] = []
    async with _client(tmp_path, _registry({}, seen)) as client:
        with pytest.raises(RegistryError, match="not found"):
            await client.get_manifest(Reference.parse("r.example/app:1"))
    assert [f"{r.url.scheme}://{r.url.netloc.decode()}" for r in seen] == [
        "https://a.example:5000",
        "http://b.example",  # the default port, which httpx leaves out
        "http://c.example:5000",  # no TLS settings: plain http as written
        "https://d.example",
        "https://r.example",
    ]
