"""Reading manifests and indexes, and picking an image's manifest for a platform."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from lazyimage.errors import FormatError, NotFoundError, RegistryError
from lazyimage.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    select_platform,
    sha256_digest,
)
from lazyimage.registry._bodies import read_limited
from lazyimage.registry._errors import Op
from lazyimage.registry._hostsfile import Capability
from lazyimage.registry._http import media_type_of
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._runner import Runner

__all__ = ["DEFAULT_PLATFORM", "FetchedManifest", "Manifests", "ResolvedImage"]

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))
# The OCI spec lets registries refuse manifests over 4 MiB; refuse to buffer more.
MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index exactly as the registry sent it, with its sha256 digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class ResolvedImage:
    """An image manifest for one platform, and the index it was picked from, if any."""

    manifest: Manifest
    manifest_data: bytes
    manifest_digest: str
    index: Index | None = None
    index_data: bytes | None = None
    index_digest: str | None = None


class Manifests:
    """Manifest reads over ``runner``."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._connection = runner.connection

    async def get(self, ref: Reference) -> FetchedManifest:
        """The manifest or index ``ref`` names (by digest if it has one, else by tag)."""
        op = Op(ref.registry, ref.repository, f"manifest {ref.identifier}")
        path = f"/v2/{ref.repository}/manifests/{ref.identifier}"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> tuple[bytes, httpx.Headers]:
            headers = {"Accept": MANIFEST_ACCEPT}
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "GET", url, headers) as resp:
                if resp.status_code != 200:
                    await connection.raise_for_status(op, endpoint, resp)
                data = await read_limited(resp, MAX_MANIFEST_SIZE)
                if data is None:
                    raise op.error(RegistryError, f"larger than {MAX_MANIFEST_SIZE} bytes")
                return data, resp.headers

        # A tag is resolved only by hosts trusted to; content named by digest is checked.
        need = Capability.PULL if ref.digest else Capability.RESOLVE
        data, headers = await self._runner.pull(ref, op, attempt, bounded=True, need=need)
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise op.mismatch(f"content has digest {digest}, expected {ref.digest}")
        claimed = headers.get("docker-content-digest", "")
        if not ref.digest and claimed.startswith("sha256:") and claimed != digest:
            raise op.mismatch(f"content has digest {digest}, registry says {claimed}")
        media_type = media_type_of(headers.get("content-type"))
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            media_type = _declared_media_type(op, data)
        return FetchedManifest(data, media_type, digest)

    async def resolve(self, ref: Reference, platform: Platform) -> ResolvedImage:
        """The image manifest of ``ref`` for ``platform``, through its index if it has one."""
        top = await self.get(ref)
        op = Op(ref.registry, ref.repository, f"manifest {ref.identifier}")
        if top.media_type in MANIFEST_TYPES:
            return ResolvedImage(_parse_manifest(op, top), top.data, top.digest)
        if top.media_type not in INDEX_TYPES:
            raise op.error(RegistryError, f"unsupported media type {top.media_type!r}")
        try:
            index = Index.parse(top.data, top.media_type)
        except FormatError as exc:
            raise op.error(RegistryError, f"invalid index: {exc}") from exc
        chosen = select_platform(index, platform)
        if chosen is None:
            offered = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
            raise op.error(
                NotFoundError, f"no manifest for platform {platform} (index has {offered})"
            )
        child = await self.get(ref.with_digest(chosen.digest))
        child_op = Op(ref.registry, ref.repository, f"manifest {chosen.digest}")
        if child.media_type not in MANIFEST_TYPES:
            raise child_op.error(
                RegistryError, f"index entry is a {child.media_type!r}, not an image manifest"
            )
        return ResolvedImage(
            _parse_manifest(child_op, child),
            child.data,
            child.digest,
            index,
            top.data,
            top.digest,
        )


def _declared_media_type(op: Op, data: bytes) -> str:
    try:
        return Manifest.parse(data).media_type
    except FormatError:
        pass
    try:
        return Index.parse(data).media_type
    except FormatError as exc:
        raise op.error(RegistryError, f"neither a manifest nor an index: {exc}") from exc


def _parse_manifest(op: Op, fetched: FetchedManifest) -> Manifest:
    try:
        return Manifest.parse(fetched.data, fetched.media_type)
    except FormatError as exc:
        raise op.error(RegistryError, f"invalid manifest: {exc}") from exc
