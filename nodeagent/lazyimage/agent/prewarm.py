"""Prewarming one image on this node: resolve it, then fetch each eStargz layer's TOC and
priority zone into the cache, so the layers mount and start without waiting on the registry.

The TOCs land in the TOC store and the chunks in the chunk cache, where the snapshotter's
mounts find them later. Nothing is mounted.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
import trio

from lazyimage import errors, names
from lazyimage.agent.layers import LayerManager, LayerSpec
from lazyimage.registry import Keychain, Reference, RegistryClient

__all__ = ["ImagePrewarmer", "PrewarmError", "PrewarmResult", "SecretLoader", "dockerconfigjson"]

log = structlog.get_logger(__name__)

# Reads a pull secret's ``.dockerconfigjson`` bytes: (namespace, name) -> payload.
SecretLoader = Callable[[str, str], Awaitable[bytes]]


class PrewarmError(errors.LazyImageError):
    """Some of an image's layers could not be prewarmed; names each with its reason."""

    def __init__(self, image: str, failures: Mapping[str, str], layer_count: int) -> None:
        self.image = image
        self.failures = dict(failures)
        reasons = "; ".join(f"layer {digest}: {reason}" for digest, reason in failures.items())
        super().__init__(
            f"{image}: {len(failures)} of {layer_count} eStargz layers failed: {reasons}"
        )


@dataclass(frozen=True)
class PrewarmResult:
    digest: str  # the image manifest's digest
    layers: tuple[str, ...]  # digests of the layers prewarmed (eStargz ones)
    layer_count: int  # how many (also known for a result read back from a report)
    skipped: int  # layers that are not eStargz and so cannot be fetched lazily
    zone_bytes: int  # the prioritized zones' compressed size
    fetched_bytes: int  # bytes fetched for them now (0 when all were cached)
    seconds: float
    profile_files: int = 0  # files of the image's learned startup profile prefetched too


class ImagePrewarmer:
    def __init__(
        self,
        manager: LayerManager,
        client: RegistryClient,
        load_secret: SecretLoader | None = None,
    ) -> None:
        self._manager = manager
        self._client = client
        self._load_secret = load_secret
        self._secrets_added: set[tuple[str, str, bytes]] = set()

    async def prewarm(
        self,
        image: str,
        pull_secrets: Sequence[tuple[str, str]] = (),
        learned: Mapping[str, Sequence[str]] | None = None,
    ) -> PrewarmResult:
        """Prefetch the image's priority zones, and the files of its ``learned`` startup
        profile ({layer digest: paths}) in the layers that have them."""
        started = time.monotonic()
        ref = Reference.parse(image)
        await self._add_secrets(pull_secrets)
        resolved = await self._client.resolve_image(ref)
        pinned = ref.with_digest(resolved.manifest_digest)
        specs = [
            LayerSpec(
                pinned, layer.digest, layer.annotations[names.TOC_DIGEST_ANNOTATION], layer.size
            )
            for layer in resolved.manifest.layers
            if names.TOC_DIGEST_ANNOTATION in layer.annotations
        ]
        zones: dict[str, int] = {}
        fetched: dict[str, int] = {}
        learned = learned or {}

        failures: dict[str, str] = {}

        async def one(spec: LayerSpec) -> None:
            # Each layer's failure is its own: it is recorded and the other layers go on. An
            # exception escaping into the nursery would end the agent, and with it the FUSE
            # mount under every lazily started container on the node.
            try:
                await prewarm_layer(spec)
            except errors.LazyImageError as exc:
                failures[spec.digest] = str(exc)
            except Exception as exc:  # a bug must cost this order, not the node
                log.exception("prewarm_layer_crashed", image=image, layer=spec.digest)
                failures[spec.digest] = f"internal error: {type(exc).__name__}: {exc}"

        async def prewarm_layer(spec: LayerSpec) -> None:
            result = await self._manager.prefetch(spec, None)
            fetched[spec.digest] = int(result["fetchedBytes"])
            zones[spec.digest] = int(result.get("zoneBytes", 0))
            paths = list(learned.get(spec.digest, ()))
            if paths:
                try:
                    more = await self._manager.prefetch(spec, paths)
                except errors.NotFoundError as exc:
                    # A profile is a hint, recorded elsewhere: a bad one costs only itself.
                    log.warning("profile_ignored", image=image, layer=spec.digest, error=str(exc))
                else:
                    fetched[spec.digest] += int(more["fetchedBytes"])

        # An image's layers prefetch side by side, as containerd would mount them.
        async with trio.open_nursery() as nursery:
            for spec in specs:
                nursery.start_soon(one, spec)
        if failures:
            raise PrewarmError(image, failures, len(specs))
        result = PrewarmResult(
            digest=resolved.manifest_digest,
            layers=tuple(spec.digest for spec in specs),
            layer_count=len(specs),
            skipped=len(resolved.manifest.layers) - len(specs),
            zone_bytes=sum(zones.values()),
            fetched_bytes=sum(fetched.values()),
            seconds=time.monotonic() - started,
            profile_files=sum(len(learned.get(spec.digest, ())) for spec in specs),
        )
        log.info(
            "image_prewarmed",
            image=image,
            digest=result.digest,
            layers=len(specs),
            skipped=result.skipped,
            fetched_bytes=result.fetched_bytes,
            seconds=round(result.seconds, 3),
        )
        return result

    async def _add_secrets(self, pull_secrets: Sequence[tuple[str, str]]) -> None:
        """Learn the order's pull secrets. They also serve the image's lazy mounts later, to
        which containerd never hands a pod's credentials."""
        for namespace, name in pull_secrets:
            if self._load_secret is None:
                raise errors.LazyImageError(
                    f"pull secret {namespace}/{name}: this agent has no API server connection"
                )
            payload = await self._load_secret(namespace, name)
            key = (namespace, name, payload)
            if key in self._secrets_added:
                continue
            self._client.add_credentials(Keychain.from_dockerconfigjson(payload))
            self._secrets_added.add(key)


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
