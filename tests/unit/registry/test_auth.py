"""WWW-Authenticate parsing, scopes, the token cache, and the auth flow over a mock transport."""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator

import httpx
import pytest
from lazyimage.errors import AuthError
from lazyimage.registry import Challenge, Credentials, Keychain, parse_www_authenticate
from lazyimage.registry._auth import (
    RegistryAuth,
    ReplayRequired,
    TokenCache,
    normalise_scope,
    scope_for_request,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:ns/app:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "registry.example",
                        "scope": "repository:ns/app:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="a, b", Bearer realm="https://t.example",error=insufficient_scope',
            [
                Challenge("basic", {"realm": "a, b"}),
                Challenge("bearer", {"realm": "https://t.example", "error": "insufficient_scope"}),
            ],
        ),
        (
            'BEARER Realm = "x\\"y" , Service=s',
            [Challenge("bearer", {"realm": 'x"y', "service": "s"})],
        ),
        ("Negotiate", [Challenge("negotiate")]),
        ("", []),
        ('realm="orphan"', []),
        ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_normalise_scope() -> None:
    assert normalise_scope("repository:a:push,pull") == "repository:a:pull,push"
    assert normalise_scope("repository:b:pull repository:a:pull") == (
        "repository:a:pull repository:b:pull"
    )
    assert normalise_scope("registry:catalog:*") == "registry:catalog:*"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v2/lib/app/manifests/1", ("lib/app", "pull")),
        ("HEAD", "/v2/a/blobs/sha256:00", ("a", "pull")),
        ("POST", "/v2/a/b/blobs/uploads/", ("a/b", "pull,push")),
        ("PUT", "/v2/a/blobs/uploads/uuid", ("a", "pull,push")),
        ("GET", "/v2/x/blobs/y/manifests/1", ("x/blobs/y", "pull")),
        ("GET", "/v2/", None),
    ],
)
def test_scope_for_request(method: str, path: str, expected: tuple[str, str] | None) -> None:
    assert scope_for_request(httpx.Request(method, f"https://r.example{path}")) == expected


def test_token_cache_expires_early_and_normalises() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("realm", "svc", "repository:a:push,pull", "tok", lifetime=60.0)
    assert cache.get("realm", "svc", "repository:a:pull,push") == "tok"
    assert cache.get("realm", "other", "repository:a:pull,push") is None
    now[0] = 49.9
    assert cache.get("realm", "svc", "repository:a:pull,push") == "tok"
    now[0] = 50.1  # 10 s before the token's own expiry
    assert cache.get("realm", "svc", "repository:a:pull,push") is None
    assert len(cache) == 0


class TokenRegistry:
    """A mock registry that wants bearer tokens, and its token endpoint."""

    def __init__(self, *, token_body: dict[str, object] | None = None) -> None:
        self.token_body = token_body
        self.token_requests: list[httpx.Request] = []
        # The Authorization header of each registry request, as sent.
        self.registry_auth: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            body = self.token_body
            if body is None:
                body = {"token": f"t{len(self.token_requests)}", "expires_in": 300}
            return httpx.Response(200, json=body)
        self.registry_auth.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization", "").startswith("Bearer t"):
            return httpx.Response(200, content=b"ok")
        scope = "repository:app:pull"
        challenge = f'Bearer realm="https://auth.example/token",service="reg",scope="{scope}"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})


@pytest.mark.anyio
async def test_flow_fetches_one_token_and_reuses_it() -> None:
    mock = TokenRegistry()
    keychain = Keychain({"r.example": Credentials("u", "p")})
    auth = RegistryAuth(keychain)
    async with httpx.AsyncClient(transport=httpx.MockTransport(mock)) as client:
        for _ in range(3):
            response = await client.get("https://r.example/v2/app/manifests/1", auth=auth)
            assert response.status_code == 200
    assert len(mock.token_requests) == 1
    token_request = mock.token_requests[0]
    assert token_request.url.params.get_list("scope") == ["repository:app:pull"]
    assert token_request.url.params["service"] == "reg"
    assert token_request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    # One unauthenticated try, then three with the token.
    assert mock.registry_auth == [
        "",
        "Bearer t1",
        "Bearer t1",
        "Bearer t1",
    ]


@pytest.mark.anyio
async def test_flow_without_a_token_in_the_answer_is_auth_error() -> None:
    mock = TokenRegistry(token_body={"nothing": "here"})
    auth = RegistryAuth(Keychain())
    async with httpx.AsyncClient(transport=httpx.MockTransport(mock)) as client:
        with pytest.raises(AuthError, match="without a token"):
            await client.get("https://r.example/v2/app/manifests/1", auth=auth)


@pytest.mark.anyio
async def test_flow_never_sends_credentials_to_a_plain_http_realm_of_an_https_registry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            seen.append(request)
            return httpx.Response(200, json={"token": "tok"})
        if request.headers.get("Authorization") == "Bearer tok":
            return httpx.Response(200)
        challenge = 'Bearer realm="http://auth.example/token",service="reg"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    seen: list[httpx.Request] = []
    auth = RegistryAuth(Keychain({"r.example": Credentials("u", "p")}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.get("https://r.example/v2/app/manifests/1", auth=auth)
    assert response.status_code == 200
    assert "Authorization" not in seen[0].headers


@pytest.mark.anyio
async def test_flow_asks_for_a_resend_of_one_shot_bodies() -> None:
    mock = TokenRegistry()
    auth = RegistryAuth(Keychain())

    async def body() -> AsyncGenerator[bytes, None]:
        yield b"data"

    class StreamingTransport(httpx.AsyncBaseTransport):
        # Unlike MockTransport, leaves the body unread, as a network transport does.
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return mock(request)

    async with httpx.AsyncClient(transport=StreamingTransport()) as client:
        stream = body()
        with pytest.raises(ReplayRequired):
            await client.put(
                "https://r.example/v2/app/blobs/uploads/x",
                content=stream,
                auth=auth,
            )
        await stream.aclose()
        # The token is cached now, so the rebuilt request goes through at once.
        response = await client.get("https://r.example/v2/app/manifests/1", auth=auth)
    assert response.status_code == 200
    assert len(mock.token_requests) == 1
    assert mock.registry_auth == ["", "Bearer t1"]
