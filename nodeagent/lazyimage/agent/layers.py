"""Remote layers on this node: mount (TOC, tree, fetcher, priority-zone prefetch), unmount,
and prefetch without mounting.

A layer is named by its digest's hex; the same layer mounted for two images is one mount
with a reference count.
"""

from __future__ import annotations

import ctypes
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from lazyimage import errors, metrics
from lazyimage.agent.mountbook import BookedLayer, MountBook
from lazyimage.agent.pagecache import warm_files
from lazyimage.agent.preload import Preloader
from lazyimage.cache import ChunkCache, StoredTOC, TOCStore
from lazyimage.estargz import FOOTER_SIZE, Chunk, TOCLoader
from lazyimage.fetch import (
    CacheWriter,
    FetchConfig,
    LayerFetcher,
    Priority,
    PriorityGate,
    RegistrySource,
    TokenBucket,
)
from lazyimage.fusefs import LayerFilesystem
from lazyimage.layer import (
    AccessRecorder,
    Following,
    LayerTree,
    ProfileEntry,
    RemoteLayer,
)
from lazyimage.oci import is_digest
from lazyimage.registry import Reference, RegistryClient

__all__ = ["LayerManager", "LayerSpec", "MountedLayer"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LayerSpec:
    """What names a remote layer: the image it belongs to, its digest, and its TOC digest."""

    ref: Reference
    digest: str
    toc_digest: str
    size: int = 0  # 0: ask the registry

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> LayerSpec:
        try:
            ref = Reference.parse(str(request["ref"]))
            digest = str(request["digest"])
            toc_digest = str(request["tocDigest"])
            size = int(request.get("size") or 0)
        except (KeyError, ValueError, TypeError, errors.InvalidReferenceError) as exc:
            raise ValueError(f"need ref, digest and tocDigest: {exc}") from exc
        if not is_digest(digest) or not is_digest(toc_digest):
            raise ValueError("digest and tocDigest must be sha256:<64 hex>")
        return cls(ref, digest, toc_digest, size)

    @property
    def name(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass
class MountedLayer:
    spec: LayerSpec
    size: int
    path: Path
    tree: LayerTree
    fetcher: LayerFetcher
    recorder: AccessRecorder
    mounted_at: float
    users: int = 1
    prefetch_done: trio.Event = field(default_factory=trio.Event)
    fill_done: trio.Event = field(default_factory=trio.Event)
    prefetch_error: str = ""
    # Cancelled at unmount: the layer's prefetch and background fill end there and then.
    prefetch_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def image(self) -> str:
        """The image as pods name it: by tag when there is one (a pinned digest dropped)."""
        ref = self.spec.ref
        return str(ref.with_tag(ref.tag)) if ref.tag and ref.digest else str(ref)

    @property
    def digest(self) -> str:
        return self.spec.digest

    @property
    def mounted_for(self) -> float:
        return time.monotonic() - self.mounted_at

    def reads(self) -> list[ProfileEntry]:
        return self.recorder.profile()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "ref": str(self.spec.ref),
            "digest": self.spec.digest,
            "tocDigest": self.spec.toc_digest,
            "path": str(self.path),
            "size": self.size,
            "prefetchZone": self.tree.prefetch_zone,
            "prefetchDone": self.prefetch_done.is_set(),
            "fillDone": self.fill_done.is_set(),
            "prefetchError": self.prefetch_error,
            "fetchedBytes": self.fetcher.fetched_bytes,
            "users": self.users,
            "alsoThrough": [str(ref) for ref in _other_refs(self)],
        }


class LayerManager:
    def __init__(
        self,
        fs: LayerFilesystem,
        client: RegistryClient,
        cache: ChunkCache,
        nursery: trio.Nursery,
        *,
        gate: PriorityGate,
        writer: CacheWriter,
        fetch_config: FetchConfig | None = None,
        bucket: TokenBucket | None = None,
        background_fill: bool = True,
        tocs: TOCStore | None = None,
        book: MountBook | None = None,
    ) -> None:
        self._fs = fs
        self._client = client
        self._cache = cache
        self._nursery = nursery
        self._config = fetch_config or FetchConfig()
        self._bucket = bucket
        # One gate and one writer for every layer: demand on any layer holds back prefetch
        # on all of them, and one pool writes the cache.
        self._gate = gate
        self._writer = writer
        self._background = background_fill
        self._tocs = tocs
        self._book = book
        self._booked_users: dict[str, int] = {}  # layers taken over, until settled
        self._layers: dict[str, MountedLayer] = {}
        # Cache hits and misses of layers since unmounted, by layer digest.
        self._past_counts: dict[str, tuple[int, int]] = {}
        self._lock = trio.Lock()
        self._preloader: Preloader[_Opened] = Preloader(
            self._preload_open, lambda opened: opened.fetcher.close()
        )

    def get(self, name: str) -> MountedLayer:
        layer = self._layers.get(name)
        if layer is None:
            raise errors.NotFoundError(f"no layer {name} is mounted")
        return layer

    def all(self) -> list[MountedLayer]:
        return list(self._layers.values())

    async def mount(self, spec: LayerSpec, *, background: bool | None = None) -> MountedLayer:
        async with self._lock:
            existing = self._layers.get(spec.name)
            if existing is not None:
                _check_toc(existing, spec)
                _also_through(existing, spec)
                existing.users += 1
                await self._save_book()
                return existing
            mounted = self._attach(spec, await self._open(spec), slot=None, users=1)
            await self._save_book()
        self._start_prefetch(mounted, background)
        return mounted

    async def take_over(self) -> int:
        """Serve again every layer the mount book says this mount served, each in its inode
        slot, opened from the stored TOCs. For a mount taken over from an earlier agent;
        call before the mount serves requests. Returns how many layers came back."""
        if self._book is None:
            return 0
        booked, next_slot = await trio.to_thread.run_sync(self._book.load)
        self._fs.resume_slots(next_slot)
        restored: list[MountedLayer] = []
        async with self._lock:
            for entry in booked:
                try:
                    ref = Reference.parse(entry.ref)
                    spec = LayerSpec(ref, entry.digest, entry.toc_digest, entry.size)
                    opened = await self._open(spec)
                    mounted = self._attach(spec, opened, slot=entry.slot, users=0)
                    for also in entry.also:
                        _also_through(mounted, LayerSpec(Reference.parse(also), spec.digest, ""))
                except (errors.LazyImageError, ValueError) as exc:
                    # Its inodes answer ESTALE; the other layers are not held back.
                    log.warning("layer_not_taken_over", layer=entry.digest, error=str(exc))
                    continue
                self._booked_users[spec.name] = entry.users
                restored.append(mounted)
            await self._save_book()
        for mounted in restored:
            self._start_prefetch(mounted, None)
        return len(restored)

    async def settle_take_over(self) -> None:
        """Once the snapshotter has mounted its snapshots' layers again: each layer taken
        over keeps at least the users it had (those of the control API come back no other
        way)."""
        async with self._lock:
            for name, users in self._booked_users.items():
                layer = self._layers.get(name)
                if layer is not None:
                    layer.users = max(layer.users, users)
            self._booked_users.clear()
            await self._save_book()

    async def clear_book(self) -> None:
        """A fresh mount serves nothing yet."""
        if self._book is not None:
            await trio.to_thread.run_sync(self._book.clear)

    def _attach(
        self,
        spec: LayerSpec,
        opened: tuple[LayerFetcher, LayerTree, int],
        *,
        slot: int | None,
        users: int,
    ) -> MountedLayer:
        """Serve an opened layer on the mount."""
        started = time.monotonic()
        fetcher, tree, size = opened
        recorder = AccessRecorder()

        async def read_chunks(
            chunks: Sequence[Chunk], *, following: Following | None = None
        ) -> list[bytes]:
            return await fetcher.read(chunks, Priority.DEMAND, following=following)

        async def read_slice(
            chunk: Chunk, start: int, length: int, *, following: Following | None = None
        ) -> bytes:
            return await fetcher.read_slice(
                chunk, start, length, Priority.DEMAND, following=following
            )

        layer = RemoteLayer(tree, read_chunks, recorder, read_slice, read_ahead=True)
        path = self._fs.add_layer(spec.name, layer, slot=slot)
        mounted = MountedLayer(
            spec, size, path, tree, fetcher, recorder, time.monotonic(), users=users
        )
        self._layers[spec.name] = mounted
        log.info(
            "layer_mounted",
            layer=spec.digest,
            ref=str(spec.ref),
            nodes=tree.node_count,
            prefetch_zone=tree.prefetch_zone,
            slot=self._fs.slot_of(spec.name),
            seconds=round(time.monotonic() - started, 3),
        )
        return mounted

    def _start_prefetch(self, mounted: MountedLayer, background: bool | None) -> None:
        fill = self._background if background is None else background
        self._nursery.start_soon(self._prefetch_layer, mounted, fill)

    async def _save_book(self) -> None:
        if self._book is None:
            return
        booked = [
            BookedLayer(
                name=name,
                slot=self._fs.slot_of(name),
                ref=str(layer.spec.ref),
                digest=layer.spec.digest,
                toc_digest=layer.spec.toc_digest,
                size=layer.size,
                users=max(layer.users, self._booked_users.get(name, 0)),
                also=tuple(str(ref) for ref in _other_refs(layer)),
            )
            for name, layer in self._layers.items()
        ]
        await trio.to_thread.run_sync(self._book.save, booked, self._fs.next_slot)

    async def unmount(self, name: str) -> None:
        async with self._lock:
            layer = self.get(name)
            layer.users -= 1
            if layer.users > 0:
                return
            del self._layers[name]
            # Before any await: not one more range of this layer is asked for once the
            # last user let it go (containerd removing the image's snapshots).
            layer.prefetch_scope.cancel()
            layer.fetcher.close()
            await self._fs.remove_layer(name)
            await self._save_book()
            hits, misses = self._past_counts.get(layer.spec.digest, (0, 0))
            self._past_counts[layer.spec.digest] = (
                hits + layer.fetcher.cache_hits,
                misses + layer.fetcher.cache_misses,
            )
            metrics.forget_layer(layer.spec.digest)
            await trio.to_thread.run_sync(_release_memory)
            log.info("layer_unmounted", layer=layer.spec.digest)

    async def prefetch(self, spec: LayerSpec, paths: list[str] | None) -> dict[str, Any]:
        """Fetch a layer's priority zone, or the named files, into the cache; mount nothing."""
        mounted = self._layers.get(spec.name)
        if mounted is not None:
            _check_toc(mounted, spec)
            _also_through(mounted, spec)
            fetcher, tree = mounted.fetcher, mounted.tree
        else:
            fetcher, tree, _ = await self._open(spec)
        try:
            chunks = _chunks_of(tree, paths) if paths else _zone_chunks(tree)
            before = fetcher.fetched_bytes
            await fetcher.prefetch(chunks, Priority.PREFETCH)
            answer = {
                "digest": spec.digest,
                "chunks": len(chunks),
                "zoneBytes": tree.prefetch_zone,
                "fetchedBytes": fetcher.fetched_bytes - before,
            }
            if mounted is not None:  # its mount may have fetched the zone before this call
                answer["mountFetchedBytes"] = fetcher.fetched_bytes
                answer["warmedFiles"] = await _warm(mounted, chunks, profiled=bool(paths))
            return answer
        finally:
            if mounted is None:
                fetcher.close()

    def cache_counts(self, digests: Sequence[str]) -> tuple[int, int]:
        """Chunk reads of these layers' mounts served from the cache, and those fetched, since
        the agent started."""
        hits = misses = 0
        for digest in digests:
            past = self._past_counts.get(digest, (0, 0))
            hits, misses = hits + past[0], misses + past[1]
            mounted = self._layers.get(digest.split(":", 1)[-1])
            if mounted is not None:
                hits += mounted.fetcher.cache_hits
                misses += mounted.fetcher.cache_misses
        return hits, misses

    def preload(self, ref: Reference, digests: Sequence[str]) -> int:
        """Start opening these layers of an image (footer, TOC, index) ahead of their mounts;
        a mount takes its layer from here if the TOC digest it is given matches."""
        todo = [d for d in digests if d.split(":", 1)[-1] not in self._layers]
        return self._preloader.start(self._nursery, ref, todo)

    async def _preload_open(self, ref: Reference, digest: str) -> _Opened:
        return await self._load(LayerSpec(ref, digest, toc_digest=""))

    async def _open(self, spec: LayerSpec) -> tuple[LayerFetcher, LayerTree, int]:
        """The layer's fetcher and index, its TOC verified against ``spec.toc_digest``."""
        opened = await self._preloader.take(spec.digest)
        if opened is not None and opened.tree.toc_digest != spec.toc_digest:
            log.warning(
                "preloaded_toc_mismatch",
                layer=spec.digest,
                toc=opened.tree.toc_digest,
                expected=spec.toc_digest,
            )
            opened.fetcher.close()
            opened = None
        if opened is None:
            opened = await self._load(spec)
        return opened.fetcher, opened.tree, opened.size

    async def _load(self, spec: LayerSpec) -> _Opened:
        """Open a layer from its stored TOC, else from the registry (footer, then TOC). An
        empty ``spec.toc_digest`` verifies nothing: the caller compares ``toc_digest``."""
        if self._tocs is not None:
            stored = await trio.to_thread.run_sync(self._tocs.get, spec.digest)
            if stored is not None:
                try:
                    return await self._open_stored(spec, stored)
                except (errors.FormatError, errors.VerificationError) as exc:
                    log.warning("stored_toc_refused", layer=spec.digest, error=str(exc))
                    await trio.to_thread.run_sync(self._tocs.discard, spec.digest)
        return await self._open_remote(spec)

    async def _open_stored(self, spec: LayerSpec, stored: StoredTOC) -> _Opened:
        loader = TOCLoader(
            stored.blob_size, tail_size=len(stored.tail), expected_digest=spec.toc_digest
        )
        loader.feed_tail(stored.tail)
        tree = await trio.to_thread.run_sync(_build_tree, loader)
        source = RegistrySource(
            self._client,
            spec.ref,
            spec.digest,
            stored.blob_size,
            stall_timeout=self._config.stall_timeout,
        )
        fetcher = self._fetcher(source, spec.digest)
        return _Opened(fetcher, tree, stored.blob_size)

    async def _open_remote(self, spec: LayerSpec) -> _Opened:
        """Read the layer's footer and TOC (two range reads), verify and index it."""
        size = spec.size or await self._client.blob_size(spec.ref, spec.digest)
        source = RegistrySource(
            self._client, spec.ref, spec.digest, size, stall_timeout=self._config.stall_timeout
        )
        # The footer first, then exactly the TOC: two small requests, and not one byte of
        # file data fetched before a file is read (a larger tail would guess and overshoot).
        loader = TOCLoader(size, tail_size=FOOTER_SIZE, expected_digest=spec.toc_digest)
        tail = bytes(await source.read(*loader.tail_range))  # the footer: a few dozen bytes
        toc_bytes = len(tail)
        rest = loader.feed_tail(tail)
        blob_end = tail[loader.toc_offset - loader.tail_range[0] :] if rest is None else b""
        if rest is not None:
            member = bytes(await source.read(*rest))
            loader.feed_rest(member)
            toc_bytes += rest[1]
            blob_end = member + tail
        # Parsing a large TOC takes a while. The tree is built straight from the TOC's JSON,
        # with no TOC tree in between.
        tree = await trio.to_thread.run_sync(_build_tree, loader)
        metrics.FETCHED_BYTES.labels(spec.digest, "toc").inc(toc_bytes)
        if self._tocs is not None:
            stored = StoredTOC(loader.toc_offset, blob_end)
            await trio.to_thread.run_sync(self._tocs.put, spec.digest, stored)
        fetcher = self._fetcher(source, spec.digest)
        return _Opened(fetcher, tree, size)

    def _fetcher(self, source: RegistrySource, digest: str) -> LayerFetcher:
        return LayerFetcher(
            source,
            self._cache,
            digest,
            self._config,
            self._bucket,
            gate=self._gate,
            writer=self._writer,
        )

    async def _prefetch_layer(self, layer: MountedLayer, background: bool) -> None:
        try:
            with layer.prefetch_scope:  # an unmount ends it
                await layer.fetcher.prefetch(_zone_chunks(layer.tree), Priority.PREFETCH)
                layer.prefetch_done.set()
                if background:
                    # Lazily: the fetcher takes the layer's chunks a window at a time.
                    await layer.fetcher.prefetch(layer.tree.all_chunks(), Priority.BACKGROUND)
                    layer.fill_done.set()
                    await trio.to_thread.run_sync(_release_memory)
        except errors.LazyImageError as exc:
            if not layer.prefetch_scope.cancel_called:
                # Prefetch is an optimisation: reads still fetch on demand.
                layer.prefetch_error = str(exc)
                log.warning("prefetch_failed", layer=layer.spec.digest, error=str(exc))
        except Exception as exc:
            # This task runs in the agent's own nursery: anything escaping would end the
            # agent and every mount it serves, for the sake of an optimisation.
            layer.prefetch_error = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("prefetch_crashed", layer=layer.spec.digest)
        finally:
            layer.prefetch_done.set()
            if layer.prefetch_scope.cancel_called and not layer.fill_done.is_set():
                log.info("prefetch_stopped", layer=layer.spec.digest, reason="unmounted")


def _other_refs(mounted: MountedLayer) -> list[Reference]:
    """The repositories other than its own that the layer is also read through."""
    source = mounted.fetcher.source
    if not isinstance(source, RegistrySource):
        return []
    own = mounted.spec.ref
    return [
        ref
        for ref in source.refs
        if (ref.registry, ref.repository) != (own.registry, own.repository)
    ]


def _also_through(mounted: MountedLayer, spec: LayerSpec) -> None:
    """A mounted layer asked for through another repository (an image sharing it) is also
    read through that one when its own refuses: each repository keeps its own credentials."""
    source = mounted.fetcher.source
    if isinstance(source, RegistrySource) and source.add_ref(spec.ref):
        log.info("layer_shared", layer=spec.digest, ref=str(spec.ref), refs=len(source.refs))


@dataclass
class _Opened:
    fetcher: LayerFetcher
    tree: LayerTree
    size: int


def _build_tree(loader: TOCLoader) -> LayerTree:
    tree = LayerTree.from_loader(loader)
    _release_memory()  # the TOC's JSON text and the walk's bookkeeping, tens of MB
    return tree


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; musl has none
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def _release_memory() -> None:
    """Give the allocator's free pages back to the system.

    Building a large tree, a background fill or an unmount frees tens of MB at once, and
    glibc keeps such memory for reuse (after a large free it raises its trim threshold to
    match), so without this the agent would stay at its peak RSS for good.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _check_toc(mounted: MountedLayer, spec: LayerSpec) -> None:
    """A layer already mounted serves a new user only for the TOC digest it was verified
    against: an image that names another one is refused, as it would be if nothing were
    mounted, rather than quietly served the mounted layer's TOC."""
    if mounted.tree.toc_digest != spec.toc_digest:
        raise errors.VerificationError(
            f"layer {spec.digest}: TOC digest {spec.toc_digest} does not match the layer's "
            f"TOC ({mounted.tree.toc_digest})"
        )


async def _warm(mounted: MountedLayer, chunks: Sequence[Chunk], *, profiled: bool) -> int:
    """Read the chunks' files once through the mount (``agent.pagecache``), so that a
    container's first lookups and reads find the kernel's caches, as after a pull. The
    container's own reads of them will not reach the agent, so the recorder cannot see them:
    files of the learned profile (``profiled``) are recorded by these reads, so that the
    profile this node reports keeps them; a zone's files are left out of it, as they are
    fetched with the zone anyway and would crowd out the files the profile is for. Returns
    the files read."""
    files: list[tuple[str, int]] = []
    tree = mounted.tree
    for path in dict.fromkeys(chunk.path for chunk in chunks):
        node_id = tree.find(path)
        if node_id is None or not stat.S_ISREG(tree.attr(node_id).mode):
            continue
        if not profiled:
            mounted.recorder.ignore(node_id)
        files.append((path, tree.size(node_id)))
    warmed = await trio.to_thread.run_sync(warm_files, mounted.path, files, abandon_on_cancel=True)
    log.info(
        "layer_warmed",
        layer=mounted.digest,
        files=warmed.files,
        bytes=warmed.bytes,
        failed=warmed.failed,
        skipped=warmed.skipped,
    )
    return warmed.files


def _zone_chunks(tree: LayerTree) -> list[Chunk]:
    zone = tree.prefetch_zone
    if not zone:
        return []
    return [c for c in tree.all_chunks() if c.end <= zone]


def _chunks_of(tree: LayerTree, paths: list[str]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in paths:
        node_id = tree.find(path)
        if node_id is None:
            raise errors.NotFoundError(f"no file {path!r} in the layer")
        chunks.extend(tree.chunks_for(node_id, 0, tree.size(node_id)))
    return chunks
