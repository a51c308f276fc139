"""WWW-Authenticate parsing, scopes, the token cache, and the auth flow over a mock transport."""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator

import httpx
import pytest
from lazyimage.errors import AuthError
from lazyimage.registry import (
    Challenge,
    Credentials,
    CredentialStore,
    Keychain,
    parse_www_authenticate,
)
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


# -- several candidates: scoped grants, fallback, and tokens per credentials -----------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ACLRegistry:
    """A mock registry where each user may read only some repositories, over Basic auth or
    bearer tokens (issued per user and scope). Records what each request carried."""

    def __init__(self, users: dict[str, str], access: dict[str, set[str]], *, bearer: bool):
        self.users = users
        self.access = access
        self.bearer = bearer
        self.seen: list[tuple[str, str]] = []  # (repository or "token", Authorization)
        self.tokens: dict[str, tuple[str, set[str]]] = {}  # token -> (user, repositories)

    def _login(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("Authorization", "")
        if request.url.host == "auth.example":
            self.seen.append(("token", header))
            user = self._login(header)
            if header and user is None:
                return httpx.Response(401)
            wanted = {s.split(":")[1] for s in request.url.params.get_list("scope")}
            granted = wanted & self.access.get(user or "", set())
            token = f"t{len(self.tokens)}"
            self.tokens[token] = (user or "", granted)
            return httpx.Response(200, json={"token": token, "expires_in": 300})
        repository = request.url.path.split("/")[2] + "/" + request.url.path.split("/")[3]
        self.seen.append((repository, header))
        if self.bearer:
            token = header[7:] if header.startswith("Bearer ") else ""
            if repository in self.tokens.get(token, ("", set()))[1]:
                return httpx.Response(200, content=b"ok")
            scope = f"repository:{repository}:pull"
            challenge = f'Bearer realm="https://auth.example/token",service="reg",scope="{scope}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        user = self._login(header)
        if user is not None and repository in self.access.get(user, set()):
            return httpx.Response(200, content=b"ok")
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})


USERS = {"alice": "a", "bob": "b"}
ACCESS = {"alice": {"team-a/app"}, "bob": {"team-b/app"}}


def _scoped_store() -> CredentialStore:
    store = CredentialStore()
    store.grant(
        "secret a/pull",
        Keychain({"r.example": Credentials("alice", "a")}),
        "r.example",
        "team-a/app",
    )
    store.grant(
        "secret b/pull", Keychain({"r.example": Credentials("bob", "b")}), "r.example", "team-b/app"
    )
    return store


async def _get(auth: RegistryAuth, mock: ACLRegistry, *repositories: str) -> list[int]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(mock)) as client:
        statuses = []
        for repository in repositories:
            url = f"https://r.example/v2/{repository}/manifests/1"
            statuses.append((await client.get(url, auth=auth)).status_code)
        return statuses


@pytest.mark.anyio
@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_each_repository_gets_only_the_credentials_granted_for_it(bearer: bool) -> None:
    mock = ACLRegistry(USERS, ACCESS, bearer=bearer)
    auth = RegistryAuth(_scoped_store())
    assert (
        await _get(auth, mock, "team-a/app", "team-b/app", "team-a/app", "team-b/app") == [200] * 4
    )
    alice, bob = _basic("alice", "a"), _basic("bob", "b")
    if bearer:
        # Credentials go only to the token server, each for its own repository's scope.
        logins = [h for where, h in mock.seen if where == "token"]
        assert logins == [alice, bob]
        users_by_repo = {
            (where, mock.tokens[h[7:]][0]) for where, h in mock.seen if h.startswith("Bearer ")
        }
        assert users_by_repo == {("team-a/app", "alice"), ("team-b/app", "bob")}
    else:
        assert {h for where, h in mock.seen if where == "team-a/app"} <= {"", alice}
        assert {h for where, h in mock.seen if where == "team-b/app"} <= {"", bob}


@pytest.mark.anyio
@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_a_refused_candidate_falls_back_to_the_next_and_the_one_that_worked_leads(
    bearer: bool,
) -> None:
    store = CredentialStore()
    # Two secrets for one repository; only the second one's user may read it.
    for name, user in (("secret a/old", "alice"), ("secret b/new", "bob")):
        creds = Credentials(user, USERS[user])
        store.grant(name, Keychain({"r.example": creds}), "r.example", "team-b/app")
    mock = ACLRegistry(USERS, ACCESS, bearer=bearer)
    auth = RegistryAuth(store)
    assert await _get(auth, mock, "team-b/app") == [200]
    tried_first = len(mock.seen)
    assert await _get(auth, mock, "team-b/app", "team-b/app") == [200, 200]
    # The candidate that worked goes first: each later read is one request.
    assert len(mock.seen) == tried_first + 2
    assert store.candidates("r.example", "team-b/app")[0].source == "secret b/new"


@pytest.mark.anyio
async def test_every_candidate_refused_hands_the_last_refusal_to_the_caller() -> None:
    store = CredentialStore()
    store.grant(
        "secret a/pull",
        Keychain({"r.example": Credentials("alice", "a")}),
        "r.example",
        "team-b/app",
    )
    mock = ACLRegistry(USERS, ACCESS, bearer=False)
    assert await _get(RegistryAuth(store), mock, "team-b/app") == [401]


@pytest.mark.anyio
async def test_a_token_serves_only_the_credentials_it_was_obtained_with() -> None:
    store = CredentialStore()
    alice = Keychain({"r.example": Credentials("alice", "a")})
    store.grant("secret a/pull", alice, "r.example", "shared/app")
    mock = ACLRegistry(USERS, {"alice": {"shared/app"}, "bob": {"shared/app"}}, bearer=True)
    auth = RegistryAuth(store)
    assert await _get(auth, mock, "shared/app") == [200]
    alices_token = next(t for t, (user, _) in mock.tokens.items() if user == "alice")
    # The same repository, now with bob's secret alone: alice's cached token is not used.
    store.revoke("secret a/pull")
    store.grant(
        "secret b/pull", Keychain({"r.example": Credentials("bob", "b")}), "r.example", "shared/app"
    )
    mock.seen.clear()
    assert await _get(auth, mock, "shared/app") == [200]
    assert f"Bearer {alices_token}" not in {h for _, h in mock.seen}
    assert ("token", _basic("bob", "b")) in mock.seen


def test_token_cache_is_keyed_by_credentials() -> None:
    cache = TokenCache()
    alice, bob = Credentials("alice", "a"), Credentials("bob", "b")
    cache.put("realm", "svc", "repository:x:pull", "tok", lifetime=60.0, identity=alice)
    assert cache.get("realm", "svc", "repository:x:pull", alice) == "tok"
    assert cache.get("realm", "svc", "repository:x:pull", bob) is None
    assert cache.get("realm", "svc", "repository:x:pull") is None  # nor anonymously
    assert cache.get("realm", "svc", "repository:y:pull", alice) is None


def test_token_cache_sweeps_expired_tokens_of_credentials_gone() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    for n in range(1024):  # one token each for credentials rotated away since
        cache.put("realm", "svc", "repository:x:pull", "old", 60.0, Credentials("u", str(n)))
    now[0] = 100.0
    cache.put("realm", "svc", "repository:x:pull", "new", 60.0, Credentials("u", "current"))
    assert len(cache) == 1
