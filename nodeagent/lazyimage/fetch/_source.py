"""Where a layer's compressed bytes come from: the RangeSource protocol and a registry."""

from __future__ import annotations

from typing import Protocol

import structlog

from lazyimage import metrics
from lazyimage.errors import AuthError, NotFoundError
from lazyimage.fetch._hedge import HedgePolicy, Signals, hedged, window_for
from lazyimage.registry import Reference, RegistryClient

__all__ = ["RangeSource", "RegistrySource"]

log = structlog.get_logger("lazyimage.fetch")


class RangeSource(Protocol):
    """A blob read by ranges. Implementations retry what is worth retrying themselves, until
    the caller's deadline, and raise ``lazyimage.errors.UnavailableError`` when a failure
    may pass, another ``LazyImageError`` when it will not."""

    @property
    def size(self) -> int: ...

    async def read(
        self, offset: int, length: int, *, deadline: float | None = None
    ) -> bytes | memoryview:
        """Exactly the bytes ``[offset, offset + length)`` (a view, when that saves a copy).
        ``deadline``: an absolute time on anyio's clock after which no retry starts and the
        read gives up."""
        ...


class RegistrySource:
    """A layer blob in a registry, read with range GETs through a shared RegistryClient.

    A request that makes no progress for ``stall_timeout`` seconds (no connection, no byte
    of headers or body) is abandoned and retried under the client's RetryPolicy, until the
    caller's deadline. Retries are counted in ``lazyimage_fetch_retries`` for the layer.

    Before that, a read that has produced no byte after a few times the recent first-byte
    latency of its client's range reads is hedged: a second identical request is sent and
    whichever completes first is taken (``lazyimage_fetch_hedges``). The hedge delay stays
    below half the stall timeout, so a stall is overtaken long before it is cut. A read
    that is backing off (after a 5xx, a 429, a reset) is not hedged: it keeps its backoff.

    The same blob can be named in several repositories (images sharing a layer), each with
    credentials of its own. ``add_ref`` records another; a read that the current one refuses
    (401, 403, 404: its credentials revoked, the blob unlinked there) is tried through the
    others, and the first that serves it becomes the current one.
    """

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        digest: str,
        size: int,
        *,
        stall_timeout: float = 2.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"blob size must not be negative, not {size}")
        if stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be positive, not {stall_timeout}")
        self.client = client
        self._refs = [ref]  # the current one first
        self.digest = digest
        self.stall_timeout = stall_timeout
        self._size = size
        ceiling = min(HedgePolicy.ceiling, stall_timeout / 2)
        policy = HedgePolicy(ceiling=ceiling, floor=min(HedgePolicy.floor, ceiling))
        self._latency = window_for(client, policy)

    @property
    def size(self) -> int:
        return self._size

    @property
    def ref(self) -> Reference:
        """The reference reads go through now."""
        return self._refs[0]

    @property
    def refs(self) -> list[Reference]:
        return list(self._refs)

    def add_ref(self, ref: Reference) -> bool:
        """Also read the blob through ``ref``'s repository when the others refuse; False if
        that repository is known already."""
        if any(_same_repository(ref, known) for known in self._refs):
            return False
        self._refs.append(ref)
        return True

    async def read(self, offset: int, length: int, *, deadline: float | None = None) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"range {offset}+{length} is outside the blob's {self._size} bytes")
        refs = list(self._refs)
        for index, ref in enumerate(refs):
            try:
                data = await self._read_through(ref, offset, length, deadline)
            except (AuthError, NotFoundError) as exc:
                if index + 1 == len(refs):
                    raise
                log.warning(
                    "layer_source_refused",
                    layer=self.digest,
                    repository=f"{ref.registry}/{ref.repository}",
                    error=str(exc),
                )
                continue
            if index:  # this one serves it: the next reads go there first
                self._refs.remove(ref)
                self._refs.insert(0, ref)
            return data
        raise AssertionError("unreachable: a source has at least one reference")

    async def _read_through(
        self, ref: Reference, offset: int, length: int, deadline: float | None
    ) -> memoryview:
        async def request(signals: Signals) -> memoryview:
            def retried(cause: str) -> None:
                self._retried(cause)
                signals.retrying()

            return await self.client.read_range(
                ref,
                self.digest,
                offset,
                length,
                stall_timeout=self.stall_timeout,
                on_retry=retried,
                on_attempt=signals.attempt,
                on_progress=signals.progress,
                deadline=deadline,
            )

        return await hedged(request, self._latency, on_hedge=self._hedged)

    def _hedged(self) -> None:
        metrics.FETCH_HEDGES.labels(self.digest).inc()

    def _retried(self, cause: str) -> None:
        metrics.FETCH_RETRIES.labels(self.digest).inc()

    def __repr__(self) -> str:
        return f"RegistrySource({self.ref.registry}/{self.ref.repository}@{self.digest})"


def _same_repository(a: Reference, b: Reference) -> bool:
    return (a.registry, a.repository) == (b.registry, b.repository)
