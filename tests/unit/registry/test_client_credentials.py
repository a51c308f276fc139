"""The client reads refused credentials' sources again, once per operation, and tries again
only if they changed; over httpx.MockTransport with a fake clock for the store."""

from __future__ import annotations

import base64

import httpx
import pytest
from lazyimage.errors import AuthError
from lazyimage.registry import (
    Credentials,
    CredentialStore,
    Keychain,
    Reference,
    RegistryClient,
    RetryPolicy,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REF = Reference.parse("r.example/team-a/app:1")
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001, total_timeout=5.0)
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


class Registry:
    """Basic auth with one user whose password the test changes, as an admin rotating it."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.headers: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("Authorization", "")
        self.headers.append(header)
        expected = "Basic " + base64.b64encode(f"alice:{self.password}".encode()).decode()
        if header == expected:
            media = "application/vnd.oci.image.manifest.v1+json"
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": media})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})


class Secret:
    def __init__(self, password: str | None) -> None:
        self.password = password
        self.reads = 0

    async def __call__(self) -> Keychain | None:
        self.reads += 1
        if self.password is None:
            return None
        return Keychain({"r.example": Credentials("alice", self.password)})


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _setup(
    registry_password: str, secret: Secret
) -> tuple[RegistryClient, Registry, CredentialStore, Clock]:
    clock = Clock()
    store = CredentialStore(clock=clock)
    assert secret.password is not None
    first = Keychain({"r.example": Credentials("alice", secret.password)})
    store.grant("secret a/pull", first, "r.example", "team-a/app", reload=secret)
    registry = Registry(registry_password)
    client = RegistryClient(credentials=store, retry=FAST, transport=httpx.MockTransport(registry))
    return client, registry, store, clock


async def test_a_rotated_secret_is_read_again_after_a_refusal() -> None:
    secret = Secret("old")
    client, registry, _, _ = _setup("old", secret)
    async with client:
        await client.get_manifest(REF)
        registry.password = secret.password = "new"
        fetched = await client.get_manifest(REF)
    assert fetched.data == MANIFEST
    assert secret.reads == 1


async def test_a_deleted_secret_is_dropped_and_the_read_goes_anonymously() -> None:
    secret = Secret("old")
    client, registry, store, _ = _setup("old", secret)
    async with client:
        await client.get_manifest(REF)
        registry.password, secret.password = "revoked", None
        registry.headers.clear()
        with pytest.raises(AuthError, match="not in the keychain"):
            await client.get_manifest(REF)
        registry.headers.clear()
        with pytest.raises(AuthError):
            await client.get_manifest(REF)
    assert store.sources == []
    assert registry.headers == [""]  # no credentials sent any more, nothing read again
    assert secret.reads == 1


async def test_a_registry_that_keeps_refusing_causes_bounded_rereads() -> None:
    secret = Secret("wrong")
    client, registry, _, clock = _setup("right", secret)
    async with client:
        for _ in range(40):  # 40 reads over 10 s
            with pytest.raises(AuthError, match=r"were refused \(tried: secret a/pull\)"):
                await client.get_manifest(REF)
            clock.now += 0.25
    # Read again at 0, 1, 3 and 7 s. The first read learns that the registry wants Basic
    # (two requests); each later one is a single request: none is tried again, since the
    # secret never changed.
    assert secret.reads == 4
    assert len(registry.headers) == 41


async def test_an_unchanged_source_is_not_tried_twice() -> None:
    secret = Secret("wrong")
    client, registry, _, _ = _setup("right", secret)
    async with client:
        with pytest.raises(AuthError):
            await client.get_manifest(REF)
    # Unauthenticated, then Basic: one go; the re-read found nothing new, so no second go.
    assert registry.headers == ["", registry.headers[1]]
    assert secret.reads == 1
