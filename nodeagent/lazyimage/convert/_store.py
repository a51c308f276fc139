"""Where images live: a registry repository or an OCI layout directory, behind one interface.

``parse_location`` turns a command-line argument into one: ``oci:DIR[:TAG]`` is a layout,
anything else a registry reference (``HOST[:PORT]/REPO[:TAG|@DIGEST]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from lazyimage.errors import InvalidReferenceError, NotFoundError, StorageError
from lazyimage.oci import INDEX_TYPES, Descriptor, OCILayout, copy_verified, sha256_digest
from lazyimage.registry import Reference, RegistryClient

__all__ = [
    "ImageStore",
    "LayoutLocation",
    "LayoutStore",
    "Location",
    "RegistryStore",
    "RootManifest",
    "parse_location",
]


@dataclass(frozen=True)
class LayoutLocation:
    path: Path
    tag: str

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


Location = Reference | LayoutLocation


def parse_location(text: str) -> Location:
    """``oci:DIR[:TAG]`` or a registry reference."""
    if text.startswith("oci:"):
        rest = text[4:]
        if not rest:
            raise InvalidReferenceError("oci: needs a directory, as in oci:DIR[:TAG]")
        path, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag:
            path, tag = rest, ""
        return LayoutLocation(Path(path), tag)
    return Reference.parse(text)


@dataclass(frozen=True)
class RootManifest:
    """The manifest or index a location names, as stored."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        """By media type, or for an entry stored without one, by the JSON's own fields."""
        if self.media_type:
            return self.media_type in INDEX_TYPES
        try:
            doc = json.loads(self.data)
        except ValueError:
            return False
        if not isinstance(doc, dict):
            return False
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared in INDEX_TYPES
        return "manifests" in doc and "layers" not in doc


class ImageStore(Protocol):
    """What converting and inspecting an image needs from where it is stored."""

    @property
    def name(self) -> str: ...

    async def get_root(self) -> RootManifest: ...

    async def get_manifest(self, digest: str) -> RootManifest: ...

    async def get_blob(self, digest: str) -> bytes: ...

    async def download_blob(self, desc: Descriptor, dest: Path) -> None:
        """Copy a blob to ``dest``, verified against its digest."""
        ...

    async def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes: ...

    async def has_blob(self, digest: str) -> bool: ...

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None: ...

    async def put_blob(self, data: bytes) -> str: ...

    async def put_manifest(self, data: bytes, media_type: str, *, tag: bool) -> str:
        """Store a manifest or index; ``tag`` names it with the location's tag."""
        ...


class RegistryStore:
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self._client = client
        self._ref = ref

    @property
    def name(self) -> str:
        return str(self._ref)

    async def get_root(self) -> RootManifest:
        fetched = await self._client.get_manifest(self._ref)
        return RootManifest(fetched.data, fetched.media_type, fetched.digest)

    async def get_manifest(self, digest: str) -> RootManifest:
        fetched = await self._client.get_manifest(self._ref.with_digest(digest))
        return RootManifest(fetched.data, fetched.media_type, fetched.digest)

    async def get_blob(self, digest: str) -> bytes:
        return await self._client.get_blob(self._ref, digest)

    async def download_blob(self, desc: Descriptor, dest: Path) -> None:
        await self._client.download_blob(self._ref, desc.digest, dest)

    async def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        return bytes(await self._client.read_range(self._ref, desc.digest, offset, length))

    async def has_blob(self, digest: str) -> bool:
        return await self._client.has_blob(self._ref, digest)

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None:
        await self._client.push_blob(self._ref, path, digest, size)

    async def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        await self._client.push_blob(self._ref, data, digest, len(data))
        return digest

    async def put_manifest(self, data: bytes, media_type: str, *, tag: bool) -> str:
        target = self._ref if tag else self._ref.with_digest(sha256_digest(data))
        if tag and not self._ref.tag and not self._ref.digest:
            target = self._ref.with_tag("latest")
        return await self._client.push_manifest(target, data, media_type)


class LayoutStore:
    """An OCI layout directory. A write the filesystem refuses (full, read-only, denied) is a
    StorageError naming the layout; the layout's writes are atomic, so it leaves no torn file
    and index.json as it was."""

    def __init__(self, location: LayoutLocation, *, create: bool = False) -> None:
        self._location = location
        if create:
            with self._storing("cannot create the layout"):
                self._layout = OCILayout.create(location.path)
        else:
            self._layout = OCILayout(location.path)
        if not create and not self._layout.exists():
            raise NotFoundError(f"{location.path} is not an OCI layout directory")

    @contextmanager
    def _storing(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(f"{self.name}: {what}: {exc.strerror or exc}") from exc

    @property
    def name(self) -> str:
        return str(self._location)

    async def get_root(self) -> RootManifest:
        desc = self._layout.resolve(self._location.tag)
        return RootManifest(self._layout.read_blob(desc.digest), desc.media_type, desc.digest)

    async def get_manifest(self, digest: str) -> RootManifest:
        data = await anyio.to_thread.run_sync(self._layout.read_blob, digest)
        return RootManifest(data, "", digest)

    async def get_blob(self, digest: str) -> bytes:
        return await anyio.to_thread.run_sync(self._layout.read_blob, digest)

    async def download_blob(self, desc: Descriptor, dest: Path) -> None:
        source = self._layout.blob_path(desc.digest)
        if not source.is_file():
            raise NotFoundError(f"blob {desc.digest} not in {self.name}")
        await anyio.to_thread.run_sync(copy_verified, source, dest, desc.digest)

    async def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        def read() -> bytes:
            with open(self._layout.blob_path(desc.digest), "rb") as blob:
                blob.seek(offset)
                return blob.read(length)

        return await anyio.to_thread.run_sync(read)

    async def has_blob(self, digest: str) -> bool:
        return self._layout.has_blob(digest)

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None:
        with self._storing(f"cannot store blob {digest}"):
            await anyio.to_thread.run_sync(self._layout.import_blob_file, path, digest)

    async def put_blob(self, data: bytes) -> str:
        with self._storing("cannot store a blob"):
            return self._layout.write_blob(data)

    async def put_manifest(self, data: bytes, media_type: str, *, tag: bool) -> str:
        with self._storing("cannot store the manifest"):
            digest = self._layout.write_blob(data)
        desc = Descriptor(media_type, digest, len(data))
        name = (self._location.tag or "latest") if tag else ""
        with self._storing("cannot update index.json"):
            self._layout.set_tag(desc, name)
        return digest
