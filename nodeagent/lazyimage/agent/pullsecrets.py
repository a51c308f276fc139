"""Pull secrets that orders name: read by name, and scoped to each order's image repository.

An order carries its pod's pull secrets by name. Each is read through the API server by name
(never listed or watched) and granted to the registry client's CredentialStore for the order's
image repository alone, so a secret of one namespace never serves the images of another; the
lazy mounts of that repository use it later, since containerd never hands a pod's credentials
to a snapshotter. A secret is read again when an order names it again, when the registry
refuses it (the store's refresh) and on ``recheck_forever``; one found deleted stops being used.
A secret that is missing or malformed is skipped, as kubelet skips it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from lazyimage import errors
from lazyimage.registry import CredentialStore, Keychain, Reference

__all__ = ["PullSecrets", "SecretReader", "dockerconfigjson", "source_name"]

log = structlog.get_logger(__name__)

# Reads a pull secret's ``.dockerconfigjson`` bytes by (namespace, name); None if it does not
# exist. Other failures raise a LazyImageError.
SecretReader = Callable[[str, str], Awaitable[bytes | None]]


def source_name(namespace: str, name: str) -> str:
    """How a pull secret is named as a credential source (in logs and errors)."""
    return f"secret {namespace}/{name}"


class PullSecrets:
    def __init__(self, store: CredentialStore, read: SecretReader) -> None:
        self._store = store
        self._read = read

    async def grant(self, image: Reference, secrets: Sequence[tuple[str, str]]) -> list[str]:
        """Read each secret now and let it serve ``image``'s repository. A secret that does
        not exist (dropped, if it served before), cannot be read (say, RBAC allows only some
        namespaces) or cannot be parsed is skipped, as kubelet skips it: one order may carry
        the secrets of pods of several namespaces. Returns what was wrong with those, one line
        each, for an error should the registry refuse."""
        problems: list[str] = []
        for namespace, name in secrets:
            source = source_name(namespace, name)
            try:
                keychain = await self._keychain(namespace, name)
            except errors.LazyImageError as exc:  # its JSON, or the API server refusing
                problems.append(str(exc))
                continue
            if keychain is None:
                self._store.revoke(source)
                problems.append(f"pull secret {namespace}/{name} not found")
                continue
            if keychain.lookup(image.registry, image.repository) is None:
                log.warning(
                    "pull_secret_has_no_credentials",
                    secret=f"{namespace}/{name}",
                    registry=image.registry,
                    repository=image.repository,
                )
            self._store.grant(
                source,
                keychain,
                image.registry,
                image.repository,
                reload=functools.partial(self._keychain, namespace, name),
            )
        for problem in problems:
            log.warning("pull_secret_unusable", image=str(image), error=problem)
        return problems

    async def _keychain(self, namespace: str, name: str) -> Keychain | None:
        payload = await self._read(namespace, name)
        if payload is None:
            log.info("pull_secret_gone", secret=f"{namespace}/{name}")
            return None
        return Keychain.from_dockerconfigjson(payload, f"pull secret {namespace}/{name}")

    async def recheck_forever(self, interval: float) -> None:
        """Every ``interval`` seconds, read every granted secret again, so that one deleted
        or changed is noticed even while the registry still accepts the old credentials."""
        while True:
            await trio.sleep(interval)
            try:
                await self._store.recheck()
            except Exception:  # a bug here must not end the order follower
                log.exception("pull_secret_recheck_crashed")


def dockerconfigjson(secret: dict[str, object], namespace: str, name: str) -> bytes:
    """The ``.dockerconfigjson`` (or legacy ``.dockercfg``) payload of a Secret object."""
    data = secret.get("data")
    if isinstance(data, dict):
        for key in (".dockerconfigjson", ".dockercfg"):
            value = data.get(key)
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except ValueError as exc:
                    raise errors.LazyImageError(
                        f"pull secret {namespace}/{name}: {key} is not base64"
                    ) from exc
    raise errors.LazyImageError(
        f"pull secret {namespace}/{name} has no .dockerconfigjson (type {secret.get('type')!r})"
    )
