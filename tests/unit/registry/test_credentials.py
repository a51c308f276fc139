"""CredentialStore: grants scoped to one repository, the order candidates are tried in, and
reading sources again (bounded); DockerConfigFile: the node's file read again on change."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from lazyimage.errors import LazyImageError
from lazyimage.registry import Credentials, CredentialStore, DockerConfigFile, Keychain
from lazyimage.registry._credentials import ANONYMOUS, NODE, Candidate

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REG = "reg.example:5000"
ALICE = Credentials("alice", "a")
BOB = Credentials("bob", "b")
ADMIN = Credentials("admin", "n")


def _keychain(creds: Credentials, host: str = REG) -> Keychain:
    return Keychain({host: creds})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A pull secret as the API server has it: ``value`` is None once it is deleted."""

    def __init__(self, creds: Credentials | None, host: str = REG) -> None:
        self.value = creds
        self.host = host
        self.reads = 0
        self.failing = False

    async def __call__(self) -> Keychain | None:
        self.reads += 1
        if self.failing:
            raise LazyImageError("apiserver unreachable")
        return None if self.value is None else _keychain(self.value, self.host)


def _sources(store: CredentialStore, repository: str | None) -> list[str]:
    return [c.source for c in store.candidates(REG, repository)]


def test_a_grant_serves_its_repository_and_no_other() -> None:
    store = CredentialStore()
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app")
    store.grant("secret b/pull", _keychain(BOB), REG, "team-b/app")
    assert store.candidates(REG, "team-a/app") == [Candidate("secret a/pull", ALICE)]
    assert store.candidates(REG, "team-b/app") == [Candidate("secret b/pull", BOB)]
    # Not a prefix: a grant for team-a/app says nothing about team-a/app/sub or team-a.
    assert store.candidates(REG, "team-a/app/sub") == [ANONYMOUS]
    assert store.candidates(REG, "team-a") == [ANONYMOUS]
    assert store.candidates(REG, None) == [ANONYMOUS]
    # Nor another registry that the same secret happens to have credentials for.
    both = Keychain({REG: ALICE, "other.example": ALICE})
    store.grant("secret a/pull", both, REG, "team-a/app")
    assert store.candidates("other.example", "team-a/app") == [ANONYMOUS]


def test_the_nodes_credentials_are_host_wide_and_come_after_grants() -> None:
    store = CredentialStore(_keychain(ADMIN))
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app")
    assert _sources(store, "team-a/app") == ["secret a/pull", NODE]
    assert store.candidates(REG, "anything/else") == [Candidate(NODE, ADMIN)]
    assert store.candidates(REG, None) == [Candidate(NODE, ADMIN)]
    assert store.candidates("elsewhere.example", "x") == [ANONYMOUS]


def test_docker_hub_names_meet() -> None:
    store = CredentialStore()
    store.grant("secret a/hub", _keychain(ALICE, "https://index.docker.io/v1/"), "docker.io", "a/x")
    assert store.candidates("registry-1.docker.io", "a/x") == [Candidate("secret a/hub", ALICE)]


def test_order_first_granted_then_what_worked_first_and_what_was_refused_last() -> None:
    store = CredentialStore(_keychain(ADMIN))
    for name, creds in (("secret a/one", ALICE), ("secret b/two", BOB)):
        store.grant(name, _keychain(creds), REG, "shared/app")
    assert _sources(store, "shared/app") == ["secret a/one", "secret b/two", NODE]
    bob = Candidate("secret b/two", BOB)
    store.worked(REG, "shared/app", bob)
    assert _sources(store, "shared/app") == ["secret b/two", "secret a/one", NODE]
    store.refused(REG, "shared/app", bob)
    assert _sources(store, "shared/app") == ["secret a/one", NODE, "secret b/two"]
    # Changed credentials are new candidates: no longer behind.
    store.grant("secret b/two", _keychain(Credentials("bob", "rotated")), REG, "shared/app")
    assert _sources(store, "shared/app") == ["secret a/one", "secret b/two", NODE]
    # What worked for one repository says nothing about another.
    store.grant("secret b/two", _keychain(BOB), REG, "other/app")
    store.worked(REG, "shared/app", Candidate(NODE, ADMIN))
    assert _sources(store, "other/app") == ["secret b/two", NODE]


def test_one_source_granted_for_two_repositories_is_one_source() -> None:
    store = CredentialStore()
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app")
    version = store.version
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app")
    assert store.version == version  # nothing changed
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/tool")
    assert store.sources == ["secret a/pull"]
    assert store.scopes("secret a/pull") == [(REG, "team-a/app"), (REG, "team-a/tool")]
    store.revoke("secret a/pull")
    assert store.candidates(REG, "team-a/app") == [ANONYMOUS]
    assert store.candidates(REG, "team-a/tool") == [ANONYMOUS]
    assert store.sources == []


async def test_a_refusal_reads_the_source_again_and_a_rotation_is_picked_up() -> None:
    store = CredentialStore()
    source = Source(ALICE)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=source)
    since = store.version
    rotated = Credentials("alice", "rotated")
    source.value = rotated
    assert await store.refresh(REG, "team-a/app", since) is True
    assert source.reads == 1
    assert store.candidates(REG, "team-a/app") == [Candidate("secret a/pull", rotated)]


async def test_a_source_read_as_gone_stops_being_used() -> None:
    store = CredentialStore(_keychain(ADMIN))
    source = Source(ALICE)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=source)
    since = store.version
    source.value = None
    assert await store.refresh(REG, "team-a/app", since) is True
    assert store.candidates(REG, "team-a/app") == [Candidate(NODE, ADMIN)]
    assert store.sources == []


async def test_rereads_back_off_while_the_source_stays_the_same() -> None:
    clock = Clock()
    store = CredentialStore(clock=clock, backoff=(1.0, 8.0))
    source = Source(ALICE)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=source)
    reads_at: list[float] = []
    # A registry that refuses forever, asked 4 times a second for 30 s.
    for _ in range(120):
        before = source.reads
        assert await store.refresh(REG, "team-a/app", store.version) is False
        if source.reads > before:
            reads_at.append(clock.now)
        clock.now += 0.25
    assert [t - 100.0 for t in reads_at] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert source.reads == 6
    # A change starts the backoff over.
    source.value = Credentials("alice", "new")
    clock.now += 8.0
    assert await store.refresh(REG, "team-a/app", store.version) is True
    assert await store.refresh(REG, "team-a/app", store.version) is False
    assert source.reads == 8


async def test_a_change_made_meanwhile_needs_no_reread() -> None:
    store = CredentialStore()
    source = Source(ALICE)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=source)
    since = store.version
    store.grant("secret a/pull", _keychain(Credentials("alice", "new")), REG, "team-a/app")
    assert await store.refresh(REG, "team-a/app", since) is True
    assert source.reads == 0


async def test_a_source_out_of_reach_is_kept_and_backed_off() -> None:
    clock = Clock()
    store = CredentialStore(clock=clock)
    source = Source(ALICE)
    source.failing = True
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=source)
    assert await store.refresh(REG, "team-a/app", store.version) is False
    assert await store.refresh(REG, "team-a/app", store.version) is False
    assert source.reads == 1
    assert store.candidates(REG, "team-a/app") == [Candidate("secret a/pull", ALICE)]


async def test_refresh_reads_only_the_sources_of_the_refused_repository() -> None:
    store = CredentialStore()
    a, b = Source(ALICE), Source(BOB)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=a)
    store.grant("secret b/pull", _keychain(BOB), REG, "team-b/app", reload=b)
    await store.refresh(REG, "team-b/app", store.version)
    assert (a.reads, b.reads) == (0, 1)


async def test_recheck_reads_every_source_and_drops_deleted_ones() -> None:
    store = CredentialStore()
    a, b = Source(ALICE), Source(BOB)
    store.grant("secret a/pull", _keychain(ALICE), REG, "team-a/app", reload=a)
    store.grant("secret b/pull", _keychain(BOB), REG, "team-b/app", reload=b)
    b.value = None
    await store.recheck()
    assert (a.reads, b.reads) == (1, 1)
    assert store.sources == ["secret a/pull"]
    assert store.candidates(REG, "team-b/app") == [ANONYMOUS]


# -- the node's docker config file ------------------------------------------------------------


def _write_config(path: Path, user: str, password: str, mtime: int) -> None:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {REG: {"auth": auth}}}))
    os.utime(path, ns=(mtime, mtime))


def test_docker_config_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "config.json"
    _write_config(path, "admin", "n", 1_000_000_000)
    node = DockerConfigFile(path, check_interval=1.0, clock=clock)
    assert node.keychain().lookup(REG) == ADMIN
    _write_config(path, "admin", "m", 2_000_000_000)
    assert node.keychain().lookup(REG) == ADMIN  # not looked at again yet
    clock.now += 1.0
    assert node.keychain().lookup(REG) == Credentials("admin", "m")
    # Half written: the credentials read before stay, until it can be read.
    path.write_text('{"auths": {')
    clock.now += 1.0
    assert node.keychain().lookup(REG) == Credentials("admin", "m")
    _write_config(path, "admin", "o", 3_000_000_000)
    clock.now += 1.0
    assert node.keychain().lookup(REG) == Credentials("admin", "o")
    path.unlink()
    clock.now += 1.0
    assert node.keychain().lookup(REG) is None


async def test_a_refusal_reads_a_changed_docker_config_at_once(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "config.json"
    _write_config(path, "admin", "n", 1_000_000_000)
    store = CredentialStore(DockerConfigFile(path, check_interval=3600.0, clock=clock))
    since = store.version
    assert await store.refresh(REG, "any/repo", since) is False  # unchanged
    _write_config(path, "admin", "m", 2_000_000_000)
    assert await store.refresh(REG, "any/repo", since) is True
    assert store.candidates(REG, "any/repo") == [Candidate(NODE, Credentials("admin", "m"))]
