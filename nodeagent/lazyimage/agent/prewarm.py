"""Prewarming one image on this node: resolve it, then fetch each eStargz layer's TOC and
priority zone into the cache, so the layers mount and start without waiting on the registry.

The TOCs land in the TOC store and the chunks in the chunk cache, where the snapshotter's
mounts find them later. Nothing is mounted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog
import trio

from lazyimage import errors, names
from lazyimage.agent.layers import LayerManager, LayerSpec
from lazyimage.agent.pullsecrets import PullSecrets
from lazyimage.registry import Reference, RegistryClient

__all__ = ["ImagePrewarmer", "PrewarmError", "PrewarmResult"]

log = structlog.get_logger(__name__)


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
        secrets: PullSecrets | None = None,
    ) -> None:
        self._manager = manager
        self._client = client
        self._secrets = secrets

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
        problems = await self._grant(ref, pull_secrets)
        try:
            resolved = await self._client.resolve_image(ref)
        except errors.AuthError as exc:
            if not problems:
                raise
            raise errors.LazyImageError(f"{exc} ({'; '.join(problems)})") from exc
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

    async def grant_secrets(self, image: str, pull_secrets: Sequence[tuple[str, str]]) -> None:
        """Let the order's pull secrets serve ``image``'s repository without prewarming it
        (for an order carried out before a restart, whose image's mounts still need them)."""
        await self._grant(Reference.parse(image), pull_secrets)

    async def _grant(self, ref: Reference, pull_secrets: Sequence[tuple[str, str]]) -> list[str]:
        """Read the order's pull secrets and scope them to its image's repository. They also
        serve that repository's lazy mounts later, to which containerd never hands a pod's
        credentials, and no other repository. Returns what was wrong with the unusable ones."""
        if not pull_secrets:
            return []
        if self._secrets is None:
            namespace, name = pull_secrets[0]
            raise errors.LazyImageError(
                f"pull secret {namespace}/{name}: this agent has no API server connection"
            )
        return await self._secrets.grant(ref, pull_secrets)
