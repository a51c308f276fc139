"""Merging byte ranges into range requests (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lazyimage.fetch._ranges import ByteRange, Span, merge_ranges


def r(offset: int, end: int) -> ByteRange:
    return ByteRange(offset, end)


def spans(result: list[Span]) -> list[tuple[int, int]]:
    return [(s.range.offset, s.range.end) for s in result]


def test_adjacent_ranges_become_one() -> None:
    result = merge_ranges([r(0, 10), r(10, 30), r(30, 31)])
    assert spans(result) == [(0, 31)]
    assert result[0].parts == (r(0, 10), r(10, 30), r(30, 31))


def test_input_order_does_not_matter_and_duplicates_are_taken_once() -> None:
    result = merge_ranges([r(30, 40), r(0, 10), r(10, 30), r(0, 10)])
    assert spans(result) == [(0, 40)]
    assert len(result[0].parts) == 3


def test_small_gaps_are_bridged_large_ones_are_not() -> None:
    ranges = [r(0, 10), r(15, 20), r(100, 110)]
    assert spans(merge_ranges(ranges)) == [(0, 10), (15, 20), (100, 110)]
    assert spans(merge_ranges(ranges, max_gap=5)) == [(0, 20), (100, 110)]
    assert spans(merge_ranges(ranges, max_gap=80)) == [(0, 110)]


def test_max_size_starts_a_new_span() -> None:
    ranges = [r(i * 10, i * 10 + 10) for i in range(10)]
    assert spans(merge_ranges(ranges, max_size=30)) == [(0, 30), (30, 60), (60, 90), (90, 100)]


def test_a_range_larger_than_max_size_is_kept_whole() -> None:
    result = merge_ranges([r(0, 5), r(5, 100), r(100, 105)], max_size=20)
    assert spans(result) == [(0, 5), (5, 100), (100, 105)]


def test_overlapping_ranges_merge() -> None:
    assert spans(merge_ranges([r(0, 50), r(20, 30), r(40, 60)])) == [(0, 60)]


def test_empty_input() -> None:
    assert merge_ranges([]) == []


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ByteRange(10, 5)
    with pytest.raises(ValueError):
        ByteRange(-1, 5)
    with pytest.raises(ValueError):
        merge_ranges([r(0, 1)], max_gap=-1)
    with pytest.raises(ValueError):
        merge_ranges([r(0, 1)], max_size=0)


ranges_strategy = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 3_000)).map(lambda t: r(t[0], t[0] + t[1])),
    max_size=60,
)


@given(ranges_strategy, st.integers(0, 500), st.one_of(st.none(), st.integers(1, 8_000)))
def test_properties(ranges: list[ByteRange], max_gap: int, max_size: int | None) -> None:
    result = merge_ranges(ranges, max_gap=max_gap, max_size=max_size)
    # Every distinct input is in exactly one span's parts, and lies inside that span.
    listed = [part for span in result for part in span.parts]
    assert sorted(listed) == sorted(set(ranges))
    for span in result:
        assert span.parts == tuple(sorted(span.parts))
        assert span.range.offset == span.parts[0].offset
        assert span.range.end == max(p.end for p in span.parts)
        # Only a single oversized part may exceed max_size.
        if max_size is not None and len(span.parts) > 1:
            assert span.range.length <= max_size
        # Parts of a span are chained by gaps of at most max_gap.
        reach = span.parts[0].end
        for part in span.parts[1:]:
            assert part.offset - reach <= max_gap
            reach = max(reach, part.end)
    # Spans come in blob order.
    assert [s.range.offset for s in result] == sorted(s.range.offset for s in result)
