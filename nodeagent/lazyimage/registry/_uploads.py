"""Pushing blobs (one POST, then one PUT with the bytes) and manifests."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import httpx

from lazyimage.errors import RegistryError
from lazyimage.oci import sha256_digest
from lazyimage.registry._blobs import Blobs
from lazyimage.registry._bodies import CHUNK, error_body
from lazyimage.registry._errors import Op, blob_op
from lazyimage.registry._http import error_detail
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._runner import Runner

__all__ = ["Uploads"]


class Uploads:
    """Pushes over ``runner``; ``blobs`` tells whether a blob is there already."""

    def __init__(self, runner: Runner, blobs: Blobs) -> None:
        self._runner = runner
        self._connection = runner.connection
        self._blobs = blobs

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Upload a manifest or index; return its digest (see RegistryClient.push_manifest)."""
        digest = sha256_digest(data)
        target = ref.digest or ref.tag
        if target is None:
            raise ValueError(f"{ref} names neither a tag nor a digest")
        op = Op(ref.registry, ref.repository, f"manifest {target} upload")
        if ref.digest is not None and ref.digest != digest:
            raise op.mismatch(f"content has digest {digest}, reference says {ref.digest}")
        path = f"/v2/{ref.repository}/manifests/{target}"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> None:
            headers = {"Content-Type": media_type}
            url = connection.url(endpoint, path)
            async with connection.open(endpoint, "PUT", url, headers, content=data) as resp:
                if resp.status_code not in (200, 201, 202):
                    await connection.raise_for_status(op, endpoint, resp)
                claimed = resp.headers.get("docker-content-digest", "")
                if claimed.startswith("sha256:") and claimed != digest:
                    raise op.mismatch(f"registry stored digest {claimed}, sent {digest}")

        await self._runner.push(ref, op, attempt, bounded=True)
        return digest

    async def push_blob(self, ref: Reference, source: bytes | Path, digest: str, size: int) -> None:
        """Upload a blob unless the registry has it: one POST, then one PUT with the bytes."""
        op = blob_op(ref, digest, f"blob {digest} upload")
        if isinstance(source, bytes):
            if len(source) != size or sha256_digest(source) != digest:
                raise op.mismatch(f"the {len(source)} bytes given are not {digest} of size {size}")
        else:
            actual_size = (await anyio.Path(source).stat()).st_size
            if actual_size != size:
                raise op.mismatch(f"{source} has {actual_size} bytes, expected {size}")
        if await self._blobs.exists(ref, digest, for_push=True):
            return
        start_path = f"/v2/{ref.repository}/blobs/uploads/"
        connection = self._connection

        async def attempt(endpoint: Endpoint) -> None:
            start = connection.url(endpoint, start_path)
            async with connection.open(endpoint, "POST", start, {"Content-Length": "0"}) as resp:
                if resp.status_code != 202:
                    await connection.raise_for_status(op, endpoint, resp)
                location = resp.headers.get("location")
                if not location:
                    raise op.error(RegistryError, "upload started without a Location")
                upload = resp.url.join(location).copy_merge_params({"digest": digest})
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            if isinstance(source, bytes):
                async with connection.open(endpoint, "PUT", upload, headers, source) as resp:
                    await self._check_upload(op, endpoint, resp)
                return
            async with await anyio.open_file(source, "rb") as file:

                async def chunks() -> AsyncGenerator[bytes, None]:
                    while chunk := await file.read(CHUNK):
                        yield chunk

                stream = chunks()
                try:
                    async with connection.open(endpoint, "PUT", upload, headers, stream) as resp:
                        await self._check_upload(op, endpoint, resp)
                finally:
                    await stream.aclose()

        await self._runner.push(ref, op, attempt, bounded=False)

    async def _check_upload(self, op: Op, endpoint: Endpoint, resp: httpx.Response) -> None:
        if resp.status_code in (201, 204):
            return
        if resp.status_code == 400:
            detail = error_detail(await error_body(resp))
            if "DIGEST_INVALID" in detail:
                raise op.mismatch(f"the registry computed another digest ({detail})")
            raise op.error(RegistryError, f"HTTP 400: {detail}", status=400)
        await self._connection.raise_for_status(op, endpoint, resp)
