"""Prewarming one image on this node: resolve it, then fetch each eStargz layer's TOC and
priority zone into the cache, so the layers mount and start without waiting on the registry.

With the node's CRI image service, the image is first pulled through it, as kubelet would
pull it: containerd then knows the image, and its eStargz layers are mounted and committed
as remote snapshots, so kubelet's own pull finds the image present and costs nothing. The
zones are then fetched through those mounts. Without it, the TOCs land in the TOC store and
the chunks in the chunk cache, where the snapshotter's mounts find them later; nothing is
mounted.
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
from lazyimage.snapshotter import CriImageService, PullAuth

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
    image_id: str = ""  # the id the node's CRI pull gave the image ("" when not pulled)


class ImagePrewarmer:
    def __init__(
        self,
        manager: LayerManager,
        client: RegistryClient,
        secrets: PullSecrets | None = None,
        images: CriImageService | None = None,
    ) -> None:
        self._manager = manager
        self._client = client
        self._secrets = secrets
        self._images = images

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
        mounted_before = set()
        if self._images is not None:
            mounted_before = {layer.spec.digest for layer in self._manager.all()}
        image_id, pull_error = await self._pull(image, ref)

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
            if image_id and spec.digest not in mounted_before:
                # Mounted by the pull, which started the zone's prefetch: all it fetched is
                # this prewarm's.
                fetched[spec.digest] = int(result.get("mountFetchedBytes", 0))
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
        if pull_error:
            raise errors.LazyImageError(
                f"{image}: its priority zones are cached, but the node's pull failed: {pull_error}"
            )
        result = PrewarmResult(
            digest=resolved.manifest_digest,
            layers=tuple(spec.digest for spec in specs),
            layer_count=len(specs),
            skipped=len(resolved.manifest.layers) - len(specs),
            zone_bytes=sum(zones.values()),
            fetched_bytes=sum(fetched.values()),
            seconds=time.monotonic() - started,
            profile_files=sum(len(learned.get(spec.digest, ())) for spec in specs),
            image_id=image_id,
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

    async def _pull(self, image: str, ref: Reference) -> tuple[str, str]:
        """Pull ``image`` through the node's CRI image service, by the name the pod uses;
        (the image id, "") or ("", what went wrong). Layers that are not eStargz are
        downloaded in full now, as the pod's own pull would download them."""
        if self._images is None:
            return "", ""
        started = time.monotonic()
        try:
            image_id = await trio.to_thread.run_sync(
                self._images.pull, image, self._pull_auth(ref), abandon_on_cancel=True
            )
        except errors.LazyImageError as exc:
            log.warning("cri_pull_failed", image=image, error=str(exc))
            return "", str(exc)
        log.info(
            "image_pulled",
            image=image,
            image_id=image_id,
            seconds=round(time.monotonic() - started, 3),
        )
        return image_id, ""

    def _pull_auth(self, ref: Reference) -> PullAuth | None:
        """The credentials the registry took for this repository (the order's pull secret,
        or the node's own), for containerd, which never sees the pod's secrets otherwise."""
        for candidate in self._client.credentials.candidates(ref.registry, ref.repository):
            creds = candidate.credentials
            if creds is not None:
                return PullAuth(
                    server_address=f"https://{ref.host}",
                    username=creds.username,
                    password=creds.password,
                    identity_token=creds.identity_token,
                    registry_token=creds.registry_token,
                )
        return None

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
