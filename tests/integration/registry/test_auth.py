"""Basic and bearer-token auth against the real registry, with real credential sources."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from lazyimage.errors import AuthError, NotFoundError
from lazyimage.oci import sha256_digest
from lazyimage.registry import Credentials, Keychain, Reference, RegistryClient

from tests.fixtures.registry import RegistryServer
from tests.integration.registry.helpers import push_image, random_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


def _auth_b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _client(server: RegistryServer, keychain: Keychain) -> RegistryClient:
    return RegistryClient(keychain=keychain, insecure_registries=(server.host,))


async def test_basic_auth_with_keychain_from_docker_config_file(
    auth_registry: RegistryServer, tmp_path: Path
) -> None:
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    auths = {
        auth_registry.host: {"auth": _auth_b64(auth_registry.username, auth_registry.password)}
    }
    config.write_text(json.dumps({"auths": auths, "credsStore": "desktop"}))
    ref = Reference.parse(f"{auth_registry.host}/private/app:1")

    async with _client(auth_registry, Keychain.from_docker_config(config)) as client:
        image = await push_image(client, ref, [random_bytes(1000, 20), random_bytes(10, 21)])
        fetched = await client.get_manifest(ref)
        layer = await client.get_blob(ref, image.layer_digests[0])

    assert fetched.digest == image.manifest_digest
    assert layer == image.layers[0]
    # After the first challenge the client sends Basic credentials up front.
    unauthorised = [r for r in auth_registry.access_log() if r.status == 401]
    assert len(unauthorised) == 1


async def test_docker_config_from_environment(
    auth_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    f"https://{auth_registry.host}/v1/": {
                        "username": auth_registry.username,
                        "password": auth_registry.password,
                    }
                }
            }
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    ref = Reference.parse(f"{auth_registry.host}/private/env:1")
    async with _client(auth_registry, Keychain.from_docker_config()) as client:
        image = await push_image(client, ref, [random_bytes(10, 22)])
        assert (await client.get_manifest(ref)).digest == image.manifest_digest


@pytest.mark.parametrize("legacy", [False, True], ids=["dockerconfigjson", "dockercfg"])
async def test_basic_auth_with_kubernetes_pull_secret(
    auth_registry: RegistryServer, legacy: bool
) -> None:
    entry = {
        "username": auth_registry.username,
        "password": auth_registry.password,
        "auth": _auth_b64(auth_registry.username, auth_registry.password),
        "email": "ci@example.invalid",
    }
    auths = {f"http://{auth_registry.host}": entry}
    payload = json.dumps(auths if legacy else {"auths": auths}).encode()
    ref = Reference.parse(f"{auth_registry.host}/secret/app:1")
    keychain = Keychain().merged(Keychain.from_dockerconfigjson(payload))
    async with _client(auth_registry, keychain) as client:
        image = await push_image(client, ref, [random_bytes(10, 23)])
        assert (await client.resolve_image(ref)).manifest_digest == image.manifest_digest


async def test_wrong_password_is_auth_error_naming_what_was_asked(
    auth_registry: RegistryServer,
) -> None:
    keychain = Keychain({auth_registry.host: Credentials(auth_registry.username, "wrong")})
    ref = Reference.parse(f"{auth_registry.host}/private/app:3.11")
    async with _client(auth_registry, keychain) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_manifest(ref)
    error = caught.value
    assert error.status == 401
    assert (error.registry, error.repository) == (auth_registry.host, "private/app")
    assert "manifest 3.11" in str(error)
    assert "were refused" in str(error)


async def test_no_credentials_is_auth_error(auth_registry: RegistryServer) -> None:
    ref = Reference.parse(f"{auth_registry.host}/private/app:1")
    digest = sha256_digest(b"x")
    async with _client(auth_registry, Keychain()) as client:
        with pytest.raises(AuthError, match="not in the keychain"):
            await client.read_range(ref, digest, 0, 52)
        with pytest.raises(AuthError, match=f"blob {digest}, range 0-51"):
            await client.read_range(ref, digest, 0, 52)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_bearer_tokens_are_fetched_once_per_scope(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    keychain = Keychain({token_registry.host: Credentials("tester", "s3cret-Pa55")})
    ref = Reference.parse(f"{token_registry.host}/team/app:1")
    async with _client(token_registry, keychain) as client:
        image = await push_image(client, ref, [random_bytes(2000, 24), random_bytes(30, 25)])
        # Pushing needed one pull token (the existence check) and one push token.
        assert tokens.count() == 2
        assert tokens.count("repository:team/app:pull") == 1
        assert tokens.count("repository:team/app:pull,push") == 1

        await client.get_manifest(ref)
        await client.get_blob(ref, image.layer_digests[0])
        await client.read_range(ref, image.layer_digests[0], 10, 100)
        assert tokens.count() == 2

        with pytest.raises(NotFoundError):
            await client.get_manifest(Reference.parse(f"{token_registry.host}/team/other:1"))
        assert tokens.count() == 3
        assert tokens.count("repository:team/other:pull") == 1

    assert all(r.account == "tester" and r.status == 200 for r in tokens.requests)
    # Only the first request of each scope went without a token.
    unauthorised = [r for r in token_registry.access_log() if r.status == 401]
    assert len(unauthorised) == 3


async def test_anonymous_token_for_public_repository_only(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    writer = Keychain({token_registry.host: Credentials("tester", "s3cret-Pa55")})
    public = Reference.parse(f"{token_registry.host}/public/tool:1")
    private = Reference.parse(f"{token_registry.host}/team/tool:1")
    async with _client(token_registry, writer) as client:
        image = await push_image(client, public, [random_bytes(10, 26)])
        await push_image(client, private, [random_bytes(10, 27)])

    async with _client(token_registry, Keychain()) as anonymous:
        assert (await anonymous.get_manifest(public)).digest == image.manifest_digest
        with pytest.raises(AuthError) as caught:
            await anonymous.get_manifest(private)
    assert caught.value.repository == "team/tool"
    anonymous_requests = [r for r in tokens.requests if r.account == ""]
    assert anonymous_requests and all(r.status == 200 for r in anonymous_requests)


async def test_identity_token_uses_the_oauth2_refresh_flow(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    tokens.refresh_tokens["refresh-0123"] = "tester"
    keychain = Keychain.from_dockerconfigjson(
        json.dumps(
            {"auths": {token_registry.host: {"auth": "", "identitytoken": "refresh-0123"}}}
        ).encode()
    )
    ref = Reference.parse(f"{token_registry.host}/team/oauth:1")
    async with _client(token_registry, keychain) as client:
        image = await push_image(client, ref, [random_bytes(10, 28)])
        assert (await client.get_manifest(ref)).digest == image.manifest_digest
    assert {r.method for r in tokens.requests} == {"POST"}
    assert all(r.account == "tester" for r in tokens.requests)


async def test_token_server_refusing_credentials_is_auth_error(
    token_registry: RegistryServer,
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    keychain = Keychain({token_registry.host: Credentials("tester", "wrong")})
    ref = Reference.parse(f"{token_registry.host}/team/app:1")
    async with _client(token_registry, keychain) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_manifest(ref)
    assert tokens.realm in str(caught.value)
    assert caught.value.repository == "team/app"
    assert [r.status for r in tokens.requests] == [401]
