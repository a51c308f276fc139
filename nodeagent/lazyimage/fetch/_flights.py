"""Single flight: one fetch per chunk digest, one download per gzip member.

A Flight is a chunk being fetched; whoever needs the chunk while it is in flight waits on
it. A Download is a member's compressed bytes being fetched as part of a span, so that
chunks of that member claimed later (several chunks in one member) use the same bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import anyio

from lazyimage.estargz import Chunk
from lazyimage.fetch._config import ChunkStore
from lazyimage.fetch._ranges import ByteRange

__all__ = [
    "ABANDONED",
    "Claim",
    "Download",
    "Flight",
    "FlightTable",
    "by_member",
    "member_of",
]


class _Abandoned(Exception):
    """The flight's claimer was cancelled: whoever still needs the chunk claims it again."""


ABANDONED = _Abandoned()


def member_of(chunk: Chunk) -> ByteRange:
    """The compressed bytes that hold ``chunk``."""
    return ByteRange(chunk.offset, chunk.end)


class Flight:
    """One chunk being fetched. When ``done``, exactly one of ``data`` (verified bytes)
    and ``error`` is set, except that a prefetch's flight drops its ``data`` once the cache
    holds it (whoever finds neither claims the chunk again). ``ahead``: claimed by
    read-ahead, not by a reader."""

    __slots__ = ("ahead", "chunk", "data", "done", "error", "member")

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.member = member_of(chunk)
        self.done = anyio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.ahead = False


class Download:
    """One member's compressed bytes, being fetched as part of some span."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        # A view into the span's bytes: members share one buffer, none is copied out of it.
        self.data: memoryview | None = None
        self.error: BaseException | None = None

    def finish(self, *, data: memoryview | None = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.data, self.error = data, error
            self.done.set()


@dataclass
class Claim:
    """The outcome of looking up chunks: cached, already in flight, or claimed by us."""

    hits: list[Chunk]
    waits: list[Flight]
    owned: list[Flight]


def by_member(flights: Iterable[Flight]) -> dict[ByteRange, list[Flight]]:
    groups: dict[ByteRange, list[Flight]] = {}
    for flight in flights:
        groups.setdefault(flight.member, []).append(flight)
    return groups


class FlightTable:
    """The chunks and members of one layer that are being fetched.

    Flights are added on the event loop and removed by cache-writer threads too, hence the
    lock. A delivered flight stays in the table until the cache holds its chunk, so a
    claim made in between finds the bytes instead of fetching them again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self._downloads: dict[ByteRange, Download] = {}  # event loop only

    def claim(
        self, chunks: Iterable[Chunk], cache: ChunkStore, skip_cache: AbstractSet[str] = frozenset()
    ) -> Claim:
        claim = Claim([], [], [])
        with self._lock:
            for chunk in chunks:
                flight = self._flights.get(chunk.digest)
                if flight is not None:
                    claim.waits.append(flight)
                elif chunk.digest not in skip_cache and cache.contains(chunk.digest):
                    claim.hits.append(chunk)
                else:
                    flight = self._flights[chunk.digest] = Flight(chunk)
                    claim.owned.append(flight)
        return claim

    def __contains__(self, digest: str) -> bool:
        return digest in self._flights

    def flights_of(self, chunks: Iterable[Chunk]) -> list[Flight]:
        """The flights fetching any of ``chunks`` now."""
        with self._lock:
            return [f for c in chunks if (f := self._flights.get(c.digest)) is not None]

    def deliver(self, flight: Flight, data: bytes) -> None:
        """Wake the waiters with verified bytes; the flight stays until ``forget``."""
        if not flight.done.is_set():
            flight.data = data
            flight.done.set()

    def fail(self, flight: Flight, error: BaseException) -> None:
        if not flight.done.is_set():
            flight.error = error
            self.forget(flight)
            flight.done.set()

    def abandon(self, flights: Iterable[Flight]) -> None:
        for flight in flights:
            self.fail(flight, ABANDONED)

    def forget(self, flight: Flight) -> None:
        with self._lock:
            if self._flights.get(flight.chunk.digest) is flight:
                del self._flights[flight.chunk.digest]

    def download_of(self, member: ByteRange) -> Download | None:
        return self._downloads.get(member)

    def start_downloads(self, members: Iterable[ByteRange]) -> dict[ByteRange, Download]:
        downloads = {member: Download() for member in members}
        self._downloads.update(downloads)
        return downloads

    def end_downloads(
        self,
        downloads: dict[ByteRange, Download],
        *,
        pieces: dict[ByteRange, memoryview] | None = None,
        error: BaseException | None = None,
    ) -> None:
        for member, download in downloads.items():
            if self._downloads.get(member) is download:
                del self._downloads[member]
            download.finish(data=pieces[member] if pieces else None, error=error)
