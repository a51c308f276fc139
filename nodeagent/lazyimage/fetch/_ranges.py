"""Merging byte ranges of a blob into few range requests. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ByteRange", "Span", "merge_ranges"]


@dataclass(frozen=True, order=True, slots=True)
class ByteRange:
    """The bytes ``[offset, end)`` of a blob."""

    offset: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= self.end:
            raise ValueError(f"invalid byte range [{self.offset}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.offset


@dataclass(frozen=True, slots=True)
class Span:
    """One range request: ``range`` covers every range in ``parts`` (sorted, distinct)."""

    range: ByteRange
    parts: tuple[ByteRange, ...]


def merge_ranges(
    ranges: Iterable[ByteRange], *, max_gap: int = 0, max_size: int | None = None
) -> list[Span]:
    """Group ``ranges`` into spans, in blob order.

    Identical ranges are taken once. A range joins the current span when the gap between
    them is at most ``max_gap`` bytes and the span stays within ``max_size``; the gap's bytes
    are fetched and thrown away, which costs less than another round trip. Every input lies
    wholly inside one span: a range larger than ``max_size`` is a span of its own, never
    split, because a gzip member is only useful whole.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must not be negative, not {max_gap}")
    if max_size is not None and max_size <= 0:
        raise ValueError(f"max_size must be positive, not {max_size}")
    spans: list[Span] = []
    start = end = 0
    parts: list[ByteRange] = []
    for part in sorted(set(ranges)):
        fits = max_size is None or max(end, part.end) - start <= max_size
        if parts and part.offset - end <= max_gap and fits:
            parts.append(part)
            end = max(end, part.end)
            continue
        if parts:
            spans.append(Span(ByteRange(start, end), tuple(parts)))
        start, end, parts = part.offset, part.end, [part]
    if parts:
        spans.append(Span(ByteRange(start, end), tuple(parts)))
    return spans
