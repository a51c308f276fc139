"""Claimed flights fetched in merged range requests, sharing members already downloading.

The chunks of one gzip member are verified from that member's bytes. A member that another
flight is already downloading (as part of its span) is taken from that download; the other
members are merged into spans of up to ``max_range``, one range request each, all at once.
"""

from __future__ import annotations

import anyio

from lazyimage.errors import LazyImageError
from lazyimage.fetch._config import FetchConfig
from lazyimage.fetch._delivery import Delivery
from lazyimage.fetch._flights import ABANDONED, Download, Flight, FlightTable, by_member
from lazyimage.fetch._ranges import ByteRange, merge_ranges
from lazyimage.fetch._requests import RangeRequests
from lazyimage.fetch._scheduler import Priority, PriorityGate

__all__ = ["SpanFetcher"]


class SpanFetcher:
    """Fetches the flights a task claimed in one layer, and delivers their chunks."""

    def __init__(
        self,
        config: FetchConfig,
        table: FlightTable,
        gate: PriorityGate,
        requests: RangeRequests,
        delivery: Delivery,
    ) -> None:
        self._config = config
        self._table = table
        self._gate = gate
        self._requests = requests
        self._delivery = delivery

    async def fetch(self, flights: list[Flight], priority: Priority) -> None:
        """Fetch claimed flights. Never raises LazyImageError: outcomes go to the flights.

        Members already being downloaded for other chunks are taken from that download;
        the rest go in merged spans, all at once.
        """
        try:
            members = by_member(flights)
            joined = {m: (d, fs) for m, fs in members.items() if (d := self._table.download_of(m))}
            own = {m: fs for m, fs in members.items() if m not in joined}
            spans = merge_ranges(
                own, max_gap=self._config.merge_gap, max_size=self._config.max_range
            )
            with self._gate.active(priority):
                if len(spans) == 1 and not joined:  # a demand miss, usually: no task group
                    [span] = spans
                    parts = {part: own[part] for part in span.parts}
                    downloads = self._table.start_downloads(parts)
                    await self._fetch_span(span.range, parts, downloads, priority)
                    return
                async with anyio.create_task_group() as group:
                    for member, (download, waiting) in joined.items():
                        group.start_soon(self._join, member, download, waiting, priority)
                    for span in spans:
                        parts = {part: own[part] for part in span.parts}
                        # Started now, not when the task runs, so claims in between see them.
                        downloads = self._table.start_downloads(parts)
                        group.start_soon(self._fetch_span, span.range, parts, downloads, priority)
        finally:
            self._table.abandon(flights)

    async def _fetch_span(
        self,
        span: ByteRange,
        parts: dict[ByteRange, list[Flight]],
        downloads: dict[ByteRange, Download],
        priority: Priority,
    ) -> None:
        """One range request for ``parts``; share each member's bytes with those who
        joined its download; then verify, deliver and store the chunks."""
        ahead = sum(m.length for m, flights in parts.items() if all(f.ahead for f in flights))
        try:
            data = await self._requests.download(span, priority, ahead)
        except LazyImageError as exc:
            self._table.end_downloads(downloads, error=exc)
            for flights in parts.values():
                for flight in flights:
                    self._table.fail(flight, exc)
            return
        except BaseException:
            self._table.end_downloads(downloads, error=ABANDONED)
            raise
        view = memoryview(data)
        pieces = {m: view[m.offset - span.offset : m.end - span.offset] for m in parts}
        self._table.end_downloads(downloads, pieces=pieces)
        items = [(m, flights, pieces[m]) for m, flights in parts.items()]
        await self._delivery.deliver(items, priority)

    async def _join(
        self, member: ByteRange, download: Download, flights: list[Flight], priority: Priority
    ) -> None:
        """Verify our chunks from a member that another flight is downloading."""
        await download.done.wait()
        if download.data is not None:
            await self._delivery.deliver([(member, flights, download.data)], priority)
        elif download.error is ABANDONED:
            parts = {member: flights}
            downloads = self._table.start_downloads(parts)
            await self._fetch_span(member, parts, downloads, priority)
        else:
            for flight in flights:
                self._table.fail(flight, download.error or ABANDONED)
