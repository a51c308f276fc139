"""Registry authentication as an httpx.Auth flow: anonymous, Basic, and the bearer-token flow.

The flow for one request (it does no I/O itself; httpx sends what it yields) tries each of the
request's candidates in turn (``CredentialStore.candidates``: the credentials that may serve
that registry and repository), moving to the next when the registry or its token server
refuses one (401 or 403). For one candidate:

1. Send the request, with a cached token or Basic credentials if this host asked for them
   before, so that a warm client needs no extra round trip.
2. On ``401`` with ``WWW-Authenticate: Bearer realm=..,service=..,scope=..``, yield a token
   request to the realm (with the candidate's Basic credentials or identity token, or
   anonymously), cache the token per (credentials, realm, service, scope) and resend. A
   token is only ever sent again with the credentials it was obtained with, for its scope.
3. On ``401`` with ``Basic``, resend with the candidate's username and password.

The last candidate's answer is the caller's. A request whose body is a one-shot stream cannot
be resent; the flow then raises ReplayRequired (after fetching the token, or noting the
refusal) so that the caller rebuilds the request.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field

import httpx

from lazyimage.errors import AuthError
from lazyimage.registry._credentials import Candidate, CredentialStore
from lazyimage.registry._keychain import Credentials, Keychain

__all__ = [
    "Challenge",
    "RegistryAuth",
    "ReplayRequired",
    "TokenCache",
    "normalise_scope",
    "parse_www_authenticate",
    "scope_for_request",
]

log = logging.getLogger("lazyimage.registry")

# The token server's default lifetime when it does not say (distribution's token spec).
DEFAULT_TOKEN_LIFETIME = 60.0
_CLIENT_ID = "lazyimage"

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The repository is everything before the last /manifests/, /blobs/ or /tags/ segment.
_API_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs|tags)/")
_REFUSED = frozenset({401, 403})
# Past this many cached tokens, storing one first drops the expired ones.
_TOKEN_CACHE_SWEEP = 1024

_TokenKey = tuple[Credentials | None, str, str, str]


@dataclass
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lower case."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def _skip(value: str, pos: int, chars: str) -> int:
    while pos < len(value) and value[pos] in chars:
        pos += 1
    return pos


def _quoted(value: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; returns (text, position after)."""
    out = []
    pos += 1
    while pos < len(value):
        char = value[pos]
        if char == "\\" and pos + 1 < len(value):
            out.append(value[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    return "".join(out), pos


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse RFC 9110 challenges. Quoted values may contain commas (``scope="a:b:pull,push"``).

    Malformed trailing text is ignored rather than rejected: a client should use whatever
    challenge it can understand.
    """
    challenges: list[Challenge] = []
    current: Challenge | None = None
    pos = 0
    while pos < len(value):
        pos = _skip(value, pos, " \t,")
        match = _TOKEN_RE.match(value, pos)
        if not match:
            break
        token = match.group()
        after = _skip(value, match.end(), " \t")
        is_param = (
            after < len(value) and value[after] == "=" and value[after + 1 : after + 2] != "="
        )
        if is_param and current is not None:
            pos = _skip(value, after + 1, " \t")
            if pos < len(value) and value[pos] == '"':
                text, pos = _quoted(value, pos)
            else:
                word = _TOKEN_RE.match(value, pos)
                text = word.group() if word else ""
                pos = word.end() if word else pos
            current.params[token.lower()] = text
        elif is_param:
            break
        else:
            current = Challenge(token.lower())
            challenges.append(current)
            pos = after
    return challenges


def normalise_scope(scope: str) -> str:
    """Sort scopes and their actions, so equal grants give equal cache keys."""
    parts = []
    for item in scope.split():
        resource, sep, actions = item.rpartition(":")
        if sep and resource.count(":") >= 1:
            parts.append(f"{resource}:{','.join(sorted(set(actions.split(','))))}")
        else:
            parts.append(item)
    return " ".join(sorted(parts))


def scope_for_request(request: httpx.Request) -> tuple[str, str] | None:
    """(repository, actions) a registry API request needs, from its path and method."""
    match = _API_PATH_RE.match(request.url.path)
    if not match:
        return None
    actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
    return match.group("name"), actions


class TokenCache:
    """Bearer tokens per (credentials, realm, service, normalised scope), dropped shortly
    before expiry. ``identity`` is the credentials a token was obtained with (None:
    anonymously), so a token never serves a request made with other credentials."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[_TokenKey, tuple[str, float]] = {}

    @staticmethod
    def _key(realm: str, service: str, scope: str, identity: Credentials | None) -> _TokenKey:
        return (identity, realm, service, normalise_scope(scope))

    def get(
        self, realm: str, service: str, scope: str, identity: Credentials | None = None
    ) -> str | None:
        key = self._key(realm, service, scope, identity)
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires = entry
        if self._clock() >= expires:
            del self._tokens[key]
            return None
        return token

    def put(
        self,
        realm: str,
        service: str,
        scope: str,
        token: str,
        lifetime: float,
        identity: Credentials | None = None,
    ) -> None:
        # Refresh a little early so a token does not expire on its way to the registry.
        margin = min(10.0, lifetime / 4)
        now = self._clock()
        if len(self._tokens) >= _TOKEN_CACHE_SWEEP:
            # Tokens of credentials since rotated or dropped are never asked for again.
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
        self._tokens[self._key(realm, service, scope, identity)] = (
            token,
            now + max(lifetime - margin, 0.0),
        )

    def discard(
        self, realm: str, service: str, scope: str, token: str, identity: Credentials | None = None
    ) -> None:
        key = self._key(realm, service, scope, identity)
        entry = self._tokens.get(key)
        if entry is not None and entry[0] == token:
            del self._tokens[key]

    def __len__(self) -> int:
        return len(self._tokens)


class ReplayRequired(Exception):
    """A one-shot request body met a challenge; credentials are now cached, resend it."""


@dataclass(frozen=True)
class _BearerRealm:
    realm: str
    service: str


def _basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _replayable(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 -- raises RequestNotRead for one-shot streams
    except httpx.RequestNotRead:
        return False
    return True


def _host(url: httpx.URL) -> str:
    return url.netloc.decode("ascii")


class RegistryAuth(httpx.Auth):
    """One instance per client; it remembers each host's scheme and caches tokens.

    ``credentials`` is a CredentialStore, or a Keychain for a store holding just that."""

    def __init__(
        self,
        credentials: CredentialStore | Keychain,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(credentials, Keychain):
            credentials = CredentialStore(credentials)
        self.credentials = credentials
        self.tokens = TokenCache(clock)
        self._clock = clock
        # host -> the bearer realm it challenged with, or "basic".
        self._schemes: dict[str, _BearerRealm | str] = {}
        # Token requests whose response body the flow must read before it continues.
        self._token_requests: weakref.WeakSet[httpx.Request] = weakref.WeakSet()

    # httpx drives a generator; these two overrides read only the token responses, so blob
    # downloads stay streamed (Auth.requires_response_body would read every response).
    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if request in self._token_requests:
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if request in self._token_requests:
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    def _cached_token(
        self, realm: _BearerRealm, scope: str, creds: Credentials | None
    ) -> str | None:
        token = self.tokens.get(realm.realm, realm.service, scope, creds)
        if token is None and scope.endswith(":pull"):
            # A push token also grants pull.
            token = self.tokens.get(realm.realm, realm.service, scope + ",push", creds)
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        host = _host(request.url)
        needed = scope_for_request(request)
        repository = needed[0] if needed else None
        scope = f"repository:{needed[0]}:{needed[1]}" if needed else ""
        candidates = self.credentials.candidates(host, repository)
        for index, candidate in enumerate(candidates):
            if index and not _replayable(request):
                # The one-shot body went with the refused candidate; the caller rebuilds the
                # request, which then tries the others first.
                raise ReplayRequired(host)
            response = yield from self._try(request, host, repository, scope, candidate)
            if response.status_code not in _REFUSED:
                if response.request is request:
                    self.credentials.worked(host, repository, candidate)
                return
            self.credentials.refused(host, repository, candidate)
            if index + 1 < len(candidates):
                log.debug("%s refused %s for %s; trying the next", host, candidate.source, scope)

    def _try(
        self,
        request: httpx.Request,
        host: str,
        repository: str | None,
        scope: str,
        candidate: Candidate,
    ) -> Generator[httpx.Request, httpx.Response, httpx.Response]:
        """One candidate's go at the request; returns the answer it ended with (the token
        server's own, if that refused)."""
        creds = candidate.credentials
        sent = ""
        if creds is not None and creds.registry_token:
            sent = f"Bearer {creds.registry_token}"
        else:
            known = self._schemes.get(host)
            if isinstance(known, _BearerRealm) and scope:
                token = self._cached_token(known, scope, creds)
                if token is not None:
                    sent = f"Bearer {token}"
            elif known == "basic" and creds is not None and creds.has_basic:
                sent = _basic_header(creds)
        if sent:
            request.headers["Authorization"] = sent
        else:
            request.headers.pop("Authorization", None)

        response = yield request
        if response.status_code != 401:
            return response
        challenges = parse_www_authenticate(
            ", ".join(response.headers.get_list("www-authenticate"))
        )
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)

        if bearer is not None and bearer.params.get("realm"):
            realm = _BearerRealm(bearer.params["realm"], bearer.params.get("service", ""))
            self._schemes[host] = realm
            wanted = bearer.params.get("scope") or scope
            if sent.startswith("Bearer "):
                # The cached token was refused (revoked, or the scope grew): fetch a new one.
                self.tokens.discard(realm.realm, realm.service, wanted, sent[7:], creds)
            token_request = self._token_request(request, realm, wanted, creds)
            self._token_requests.add(token_request)
            token_response = yield token_request
            if token_response.status_code != 200:
                # httpx hands the token server's answer to the caller, which reports it.
                return token_response
            token, lifetime = self._parse_token(token_response, host, repository)
            self.tokens.put(realm.realm, realm.service, wanted, token, lifetime, creds)
            if not _replayable(request):
                raise ReplayRequired(host)
            request.headers["Authorization"] = f"Bearer {token}"
            return (yield request)
        if basic is not None and creds is not None and creds.has_basic:
            self._schemes[host] = "basic"
            header = _basic_header(creds)
            if sent == header:
                return response
            if not _replayable(request):
                raise ReplayRequired(host)
            request.headers["Authorization"] = header
            return (yield request)
        return response

    def _token_request(
        self,
        request: httpx.Request,
        realm: _BearerRealm,
        scope: str,
        creds: Credentials | None,
    ) -> httpx.Request:
        realm_url = httpx.URL(realm.realm)
        # Never send credentials in clear text to a realm when the registry itself is https.
        downgrade = realm_url.scheme == "http" and request.url.scheme == "https"
        if creds is not None and not downgrade and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": _CLIENT_ID,
                "service": realm.service,
                "scope": scope,
            }
            return httpx.Request("POST", realm_url, data=form)
        params: list[tuple[str, str]] = []
        if realm.service:
            params.append(("service", realm.service))
        params.extend(("scope", item) for item in scope.split())
        headers = {}
        if creds is not None and creds.has_basic and not downgrade:
            params.append(("account", creds.username))
            headers["Authorization"] = _basic_header(creds)
        return httpx.Request("GET", realm_url.copy_merge_params(tuple(params)), headers=headers)

    def _parse_token(
        self, response: httpx.Response, host: str, repository: str | None
    ) -> tuple[str, float]:
        try:
            body = json.loads(response.content)
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise AuthError(
                f"token server {response.request.url.copy_with(query=None)} answered "
                f"without a usable token: {exc}",
                registry=host,
                repository=repository or "",
            ) from exc
        if not isinstance(token, str) or not token:
            raise AuthError(
                f"token server {response.request.url.copy_with(query=None)} answered without "
                "a token",
                registry=host,
                repository=repository or "",
            )
        return token, lifetime
