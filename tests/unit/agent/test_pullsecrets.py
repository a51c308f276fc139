"""Pull secrets named by orders: read by name, granted for the order's image repository only,
dropped once deleted. The API server is a small fake here; the real one is used in
tests/integration/operator/test_tenant_credentials.py."""

from __future__ import annotations

import base64
import json

import pytest
import trio
import trio.testing
from lazyimage import errors
from lazyimage.agent.pullsecrets import PullSecrets, dockerconfigjson
from lazyimage.registry import Credentials, CredentialStore, Reference

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent runs on trio


REG = "reg.example:5000"


def _payload(user: str, password: str, host: str = REG) -> bytes:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}}).encode()


class FakeSecrets:
    """Secrets by (namespace, name); counts the reads, as the API server would see them."""

    def __init__(self, secrets: dict[tuple[str, str], bytes]) -> None:
        self.secrets = secrets
        self.reads: list[tuple[str, str]] = []

    async def read(self, namespace: str, name: str) -> bytes | None:
        self.reads.append((namespace, name))
        return self.secrets.get((namespace, name))


def _sources(store: CredentialStore, repository: str) -> list[str]:
    return [c.source for c in store.candidates(REG, repository) if c.credentials]


async def test_each_secret_serves_only_the_repository_of_the_order_that_named_it() -> None:
    api = FakeSecrets({("a", "pull"): _payload("alice", "a"), ("b", "pull"): _payload("bob", "b")})
    store = CredentialStore()
    secrets = PullSecrets(store, api.read)
    await secrets.grant(Reference.parse(f"{REG}/team-a/app:1"), [("a", "pull")])
    await secrets.grant(Reference.parse(f"{REG}/team-b/app:1"), [("b", "pull")])
    assert _sources(store, "team-a/app") == ["secret a/pull"]
    assert _sources(store, "team-b/app") == ["secret b/pull"]
    assert _sources(store, "team-c/app") == []
    assert api.reads == [("a", "pull"), ("b", "pull")]


async def test_a_missing_secret_is_skipped_named_and_stops_being_used() -> None:
    api = FakeSecrets({("a", "pull"): _payload("alice", "a"), ("b", "pull"): _payload("bob", "b")})
    store = CredentialStore()
    secrets = PullSecrets(store, api.read)
    ref = Reference.parse(f"{REG}/shared/app:1")
    assert await secrets.grant(ref, [("a", "pull"), ("b", "pull")]) == []
    del api.secrets[("a", "pull")]
    # One order may carry the secrets of several namespaces' pods: the others still serve.
    assert await secrets.grant(ref, [("a", "pull"), ("b", "pull")]) == [
        "pull secret a/pull not found"
    ]
    assert store.sources == ["secret b/pull"]
    assert _sources(store, "shared/app") == ["secret b/pull"]


async def test_a_secret_read_again_after_a_refusal_is_the_current_one() -> None:
    api = FakeSecrets({("a", "pull"): _payload("alice", "old")})
    store = CredentialStore()
    await PullSecrets(store, api.read).grant(
        Reference.parse(f"{REG}/team-a/app:1"), [("a", "pull")]
    )
    api.secrets[("a", "pull")] = _payload("alice", "new")
    assert await store.refresh(REG, "team-a/app", store.version) is True
    assert [c.credentials for c in store.candidates(REG, "team-a/app")] == [
        Credentials("alice", "new")
    ]
    del api.secrets[("a", "pull")]
    await store.recheck()
    assert store.sources == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "pull secret a/pull is not valid JSON"),
        (b"[]", "pull secret a/pull is not a JSON object"),
    ],
)
async def test_a_malformed_secret_is_skipped_and_named(payload: bytes, message: str) -> None:
    store = CredentialStore()
    secrets = PullSecrets(store, FakeSecrets({("a", "pull"): payload}).read)
    problems = await secrets.grant(Reference.parse(f"{REG}/team-a/app:1"), [("a", "pull")])
    assert len(problems) == 1 and message in problems[0]
    assert store.sources == []


def test_recheck_forever_reads_granted_secrets_on_its_interval() -> None:
    api = FakeSecrets({("a", "pull"): _payload("alice", "a")})
    store = CredentialStore()
    secrets = PullSecrets(store, api.read)

    async def scenario() -> None:
        await secrets.grant(Reference.parse(f"{REG}/team-a/app:1"), [("a", "pull")])
        del api.secrets[("a", "pull")]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(secrets.recheck_forever, 300.0)
            await trio.sleep(299.0)
            assert api.reads == [("a", "pull")] and store.sources == ["secret a/pull"]
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert api.reads == [("a", "pull")] * 2
    assert store.sources == []


def test_dockerconfigjson_reads_either_key_and_names_a_bad_secret() -> None:
    value = base64.b64encode(b"{}").decode()
    assert dockerconfigjson({"data": {".dockercfg": value}}, "a", "pull") == b"{}"
    with pytest.raises(errors.LazyImageError, match=r"a/pull has no \.dockerconfigjson"):
        dockerconfigjson({"type": "Opaque", "data": {}}, "a", "pull")
    with pytest.raises(errors.LazyImageError, match=r"a/pull: \.dockerconfigjson is not base64"):
        dockerconfigjson({"data": {".dockerconfigjson": "%%"}}, "a", "pull")


async def test_a_secret_the_agent_may_not_read_is_skipped_and_kept() -> None:
    """RBAC limited to some namespaces answers 403 for the others; the API server may also be
    away for a while. Neither drops credentials the secret gave before."""

    class Forbidding(FakeSecrets):
        refuse = False

        async def read(self, namespace: str, name: str) -> bytes | None:
            if self.refuse:
                raise errors.LazyImageError(f"GET secrets/{name}: 403 Forbidden")
            return await super().read(namespace, name)

    api = Forbidding({("a", "pull"): _payload("alice", "a")})
    store = CredentialStore()
    secrets = PullSecrets(store, api.read)
    ref = Reference.parse(f"{REG}/team-a/app:1")
    assert await secrets.grant(ref, [("a", "pull")]) == []
    api.refuse = True
    assert await secrets.grant(ref, [("a", "pull")]) == ["GET secrets/pull: 403 Forbidden"]
    assert _sources(store, "team-a/app") == ["secret a/pull"]
