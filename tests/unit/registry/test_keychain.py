"""Credential sources and how keys match registries."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from lazyimage.errors import RegistryError
from lazyimage.registry import Credentials, Keychain


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _config(auths: dict[str, object]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def test_docker_config_shapes(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(
        _config(
            {
                "reg.example:5000": {"auth": _auth("alice", "pa:ss")},
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                "token.example": {"identitytoken": "refresh"},
                "empty.example": {},
            }
        )
    )
    keychain = Keychain.from_docker_config(path)
    assert keychain.lookup("reg.example:5000") == Credentials("alice", "pa:ss")
    assert keychain.lookup("docker.io") == Credentials("bob", "pw")
    assert keychain.lookup("registry-1.docker.io") == Credentials("bob", "pw")
    assert keychain.lookup("token.example") == Credentials(identity_token="refresh")
    assert keychain.lookup("empty.example") is None
    assert keychain.lookup("reg.example") is None  # the port is part of the key
    assert len(keychain) == 3


def test_missing_config_is_an_empty_keychain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(Keychain.from_docker_config(tmp_path / "absent.json")) == 0
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    assert len(Keychain.from_docker_config()) == 0


def test_docker_config_env_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "config.json").write_bytes(
        _config({"a.example": {"auth": _auth("e", "1")}})
    )
    (tmp_path / "home" / ".docker").mkdir(parents=True)
    (tmp_path / "home" / ".docker" / "config.json").write_bytes(
        _config({"a.example": {"auth": _auth("h", "2")}})
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "env"))
    assert Keychain.from_docker_config().lookup("a.example") == Credentials("e", "1")
    monkeypatch.delenv("DOCKER_CONFIG")
    assert Keychain.from_docker_config().lookup("a.example") == Credentials("h", "2")


def test_pull_secret_and_legacy_dockercfg() -> None:
    entry = {"auth": _auth("u", "p"), "email": "x@example.invalid"}
    modern = Keychain.from_dockerconfigjson(_config({"https://r.example/v2/": entry}))
    legacy = Keychain.from_dockerconfigjson(json.dumps({"r.example": entry}).encode())
    assert modern.lookup("r.example") == legacy.lookup("r.example") == Credentials("u", "p")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"auths": []}',
        b'{"auths": {"r.example": "x"}}',
        b'{"auths": {"r.example": {"auth": "%%%"}}}',
        b'{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}',
    ],
)
def test_malformed_secrets_are_registry_errors(payload: bytes) -> None:
    with pytest.raises(RegistryError):
        Keychain.from_dockerconfigjson(payload)


def test_specific_matches_win() -> None:
    keychain = Keychain(
        {
            "*.example.com": Credentials("glob", "1"),
            "eu.example.com": Credentials("exact", "2"),
            "eu.example.com/team": Credentials("team", "3"),
            "eu.example.com/team/app": Credentials("app", "4"),
        }
    )
    assert keychain.lookup("us.example.com") == Credentials("glob", "1")
    assert keychain.lookup("a.b.example.com") is None  # a glob label is one label
    assert keychain.lookup("eu.example.com") == Credentials("exact", "2")
    assert keychain.lookup("eu.example.com", "other/app") == Credentials("exact", "2")
    assert keychain.lookup("eu.example.com", "team/tool") == Credentials("team", "3")
    assert keychain.lookup("eu.example.com", "team/app") == Credentials("app", "4")
    assert keychain.lookup("eu.example.com", "teamx/app") == Credentials("exact", "2")
    assert keychain.lookup("EU.Example.com") == Credentials("exact", "2")


def test_merged_prefers_the_first_on_ties() -> None:
    first = Keychain({"r.example": Credentials("first", "1")})
    second = Keychain({"r.example": Credentials("second", "2"), "o.example": Credentials("o", "3")})
    merged = first.merged(second)
    assert merged.lookup("r.example") == Credentials("first", "1")
    assert merged.lookup("o.example") == Credentials("o", "3")
    assert second.merged(first).lookup("r.example") == Credentials("second", "2")


def test_secrets_stay_out_of_repr() -> None:
    creds = Credentials("user", "hunter2", identity_token="tok")
    assert "hunter2" not in repr(creds) and "tok" not in repr(creds)
    assert "hunter2" not in repr(Keychain({"r.example": creds}))
