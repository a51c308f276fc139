"""The cache index: sizes, LRU order, pins and the byte budget.

Not thread-safe on its own: ``ChunkCache`` calls it under its lock, and does the file I/O
that the index decides on (unlinking victims) outside the lock.

Bytes are accounted from the moment a write is planned until its file is unlinked:

    used = held (indexed chunks) + reserved (writes in flight) + doomed (removed, unlink pending)

and ``used`` never exceeds ``capacity`` at any moment, so neither does the disk space the
files take (apart from reads in flight on an evicted file, whose inode lives until they end).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lazyimage.cache._store import Stamp

__all__ = ["Entry", "LruIndex", "Reservation"]


@dataclass(slots=True, eq=False)
class Entry:
    """One chunk file. Identity matters: a new file for the same key is a new Entry."""

    size: int
    verified: bool
    verifying: threading.Event | None = None
    # The file as it was when verified (written by us, or hashed): a read that finds the
    # file changed since hashes it again before serving a byte.
    stamp: Stamp | None = None


@dataclass(slots=True, eq=False)
class Reservation:
    """Bytes set aside for one write, and the chunks evicted to make room for it."""

    size: int
    victims: list[bytes]
    backed: int  # bytes of ``size`` that wait for the victims' unlink to be counted


class LruIndex:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self.evictions = 0
        # Least recently used first. A plain dict keeps insertion order in half the memory
        # of an OrderedDict; a use moves a key to the end by taking it out and back in.
        self._entries: dict[bytes, Entry] = {}
        self._pins: Counter[bytes] = Counter()
        self._doomed: dict[bytes, int] = {}
        self._held = 0
        self._reserved = 0
        self._doomed_bytes = 0

    @property
    def used(self) -> int:
        return self._held + self._reserved + self._doomed_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> Entry | None:
        return self._entries.get(key)

    def touch(self, key: bytes) -> Entry | None:
        """Look up and mark most recently used."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._entries[key] = entry
        return entry

    def is_doomed(self, key: bytes) -> bool:
        return key in self._doomed

    def rebuild(self, chunks: Iterable[tuple[bytes, int]]) -> list[bytes]:
        """Index the files found at start, given oldest first, as not yet verified.

        Returns the oldest ones that do not fit under the cap: evicted, to be unlinked.
        """
        for key, size in chunks:
            self.add(key, Entry(size, verified=False))
        shrink = self.make_room(0)
        return shrink.victims if shrink is not None else []

    def add(self, key: bytes, entry: Entry) -> None:
        """Index a chunk file as the most recently used."""
        if key in self._entries or key in self._doomed:
            raise KeyError(key)
        self._entries[key] = entry
        self._held += entry.size

    def remove(self, key: bytes) -> Entry:
        """Take a chunk out of the index; its bytes stay counted until ``unlinked``."""
        entry = self._entries.pop(key)
        self._held -= entry.size
        self._doomed[key] = entry.size
        self._doomed_bytes += entry.size
        return entry

    def pin(self, keys: Sequence[bytes]) -> None:
        self._pins.update(keys)

    def unpin(self, keys: Sequence[bytes]) -> None:
        self._pins.subtract(keys)
        for key in keys:
            if self._pins[key] <= 0:
                del self._pins[key]

    def is_pinned(self, key: bytes) -> bool:
        return key in self._pins

    def make_room(self, size: int) -> Reservation | None:
        """Reserve ``size`` bytes, evicting unpinned chunks in LRU order if needed.

        Returns None, changing nothing, if the bytes cannot fit even after evicting every
        unpinned chunk. Otherwise the caller unlinks ``reservation.victims`` and reports
        ``unlinked`` before writing, then ``commit``s or ``unreserve``s.

        Until the victims are unlinked their bytes are still on disk, so the part of the
        reservation they will free ("backed") is only counted once they are gone. That
        keeps ``used`` within ``capacity`` at every moment, not just in the end.
        """
        if size > self.capacity:
            return None
        need = self.used + size - self.capacity
        victims: list[bytes] = []
        freed = 0
        if need > 0:
            for key, entry in self._entries.items():
                if key in self._pins:
                    continue
                victims.append(key)
                freed += entry.size
                if freed >= need:
                    break
            if freed < need:
                return None
            for key in victims:
                self.remove(key)
            self.evictions += len(victims)
        backed = min(size, freed)
        self._reserved += size - backed
        return Reservation(size, victims, backed)

    def unlinked(self, keys: Iterable[bytes], reservation: Reservation | None = None) -> None:
        """The files of ``keys`` (removed earlier) are gone from disk."""
        for key in keys:
            self._doomed_bytes -= self._doomed.pop(key)
        if reservation is not None:
            self._reserved += reservation.backed
            reservation.backed = 0

    def commit(self, key: bytes, reservation: Reservation, stamp: Stamp | None = None) -> Entry:
        """Turn a reservation into an indexed, trusted chunk."""
        entry = Entry(reservation.size, verified=True, stamp=stamp)
        self.unreserve(reservation)
        self.add(key, entry)
        return entry

    def unreserve(self, reservation: Reservation) -> None:
        self._reserved -= reservation.size - reservation.backed
        reservation.size = reservation.backed = 0
