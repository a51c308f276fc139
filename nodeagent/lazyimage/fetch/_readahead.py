"""Read-ahead: a demand miss takes along the chunks that follow it, within a budget.

A demand miss takes along the chunks that follow it in the blob (the next files of the same
directory), in the same range request: one round trip instead of several when the reader
goes on to those files, as imports of one package do. What no reader asks for is waste, so
read-ahead spends a budget: read-ahead bytes not read yet, plus those lost, stay within
``read_ahead_ratio`` of the bytes readers asked for that were fetched. The registry then
serves at most (1 + ratio) x what the readers read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from lazyimage.estargz import Chunk
from lazyimage.fetch._config import ChunkStore, FetchConfig
from lazyimage.fetch._flights import Claim, Flight, FlightTable, by_member

__all__ = ["Following", "ReadAhead"]

# The chunks after the file being read, up to a limit in compressed bytes
# (lazyimage.layer.Following): read-ahead candidates for a demand miss.
Following = Callable[[int], Sequence[Chunk]]
# Read-ahead chunks fetched but not read yet are remembered by digest, at most this many;
# past it, read-ahead stops rather than let the record grow.
_MAX_UNREAD = 1024


class ReadAhead:
    """One layer's read-ahead and its budget, in compressed bytes: what readers asked for
    that had to be fetched, read-ahead chunks no reader asked for yet (by digest), and
    read-ahead bytes lost (fetched, then refused or fetched again). Event loop only."""

    def __init__(self, config: FetchConfig, table: FlightTable, cache: ChunkStore) -> None:
        self._config = config
        self._table = table
        self._cache = cache
        self._demanded = 0
        self._unread: dict[str, int] = {}
        self._unread_bytes = 0
        self._wasted = 0

    def note_read(self, chunks: Iterable[Chunk]) -> None:
        """Readers asked for these chunks: read-ahead among them is no longer waste."""
        if not self._unread:
            return
        for chunk in chunks:
            size = self._unread.pop(chunk.digest, None)
            if size is not None:
                self._unread_bytes -= size
                self._demanded += size

    def note_claim(self, claim: Claim) -> None:
        """Count a demand claim: members to fetch for readers, read-ahead now read."""
        self.note_read(claim.hits)
        self.note_read(flight.chunk for flight in claim.waits)
        for flight in claim.owned:
            self._lose(flight.chunk)  # fetched ahead, then evicted or refused: fetched again
        self._demanded += sum(member.length for member in by_member(claim.owned))

    def refused(self, chunk: Chunk) -> None:
        """A read-ahead chunk failed verification: its bytes are lost."""
        self._lose(chunk)

    def claim_following(self, owned: list[Flight], following: Following) -> list[Flight]:
        """Claim the chunks that continue the missed range in the blob, within the window
        and the budget; none if the read-ahead record is full."""
        start = min(flight.member.offset for flight in owned)
        end = max(flight.member.end for flight in owned)
        # The whole range stays within read_ahead; what is added, within the budget.
        limit = min(self._config.read_ahead - (end - start), self._credit())
        if limit <= 0 or len(self._unread) >= _MAX_UNREAD:
            return []
        taken: list[Chunk] = []
        spent = 0
        for chunk in following(limit):
            size = chunk.end - chunk.offset
            if (
                chunk.offset != end  # a gap: not in the same range
                or spent + size > limit
                or chunk.digest in self._table
                or chunk.digest in self._unread
                or self._cache.contains(chunk.digest)
            ):
                break
            taken.append(chunk)
            spent += size
            end = chunk.end
        if not taken:
            return []
        claim = self._table.claim(taken, self._cache)
        for flight in claim.owned:
            flight.ahead = True
            size = flight.member.length
            self._unread[flight.chunk.digest] = size
            self._unread_bytes += size
        return claim.owned

    def _credit(self) -> int:
        spent = self._unread_bytes + self._wasted
        return int(self._config.read_ahead_ratio * self._demanded) - spent

    def _lose(self, chunk: Chunk) -> None:
        size = self._unread.pop(chunk.digest, None)
        if size is not None:
            self._unread_bytes -= size
            self._wasted += size
