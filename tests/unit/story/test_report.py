"""The story's table: cold starts from `kubectl logs --timestamps`, and the bytes."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.integration.node.lazypods import rfc3339_seconds
from tests.story.report import PodRun, first_line_time, human_bytes, side_by_side

pytestmark = pytest.mark.timeout(30)


def test_rfc3339_with_nanoseconds() -> None:
    assert rfc3339_seconds("2026-12-07T15:29:34.323411152Z") == pytest.approx(
        datetime.fromisoformat("2026-12-07T15:29:34.323411+00:00").timestamp(), abs=1e-6
    )
    assert (
        rfc3339_seconds("2026-12-07T15:29:34Z")
        == datetime.fromisoformat("2026-12-07T15:29:34+00:00").timestamp()
    )


def test_first_line_time_is_the_first_lines_stamp() -> None:
    log = (
        '2026-12-07T15:29:34.500000000Z {"subject": "lazyimage", "ok": true}\n'
        "2026-12-07T15:29:35.000000000Z second line\n"
    )
    assert first_line_time(log) == pytest.approx(rfc3339_seconds("2026-12-07T15:29:34.5Z"))


def test_first_line_time_of_a_silent_pod_or_an_unstamped_log() -> None:
    with pytest.raises(ValueError, match="logged nothing"):
        first_line_time("\n")
    with pytest.raises(ValueError, match="not a timestamped log line: 'hello world'"):
        first_line_time("hello world\n")


def test_cold_start_is_first_line_minus_created() -> None:
    run = PodRun("p", created=100.25, first_line=102.0, layer_bytes=1, image_bytes=2)
    assert run.cold_start == pytest.approx(1.75)


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (9_646_899, "9.2 MiB"),
        (57_250_000, "54.6 MiB"),
        (3 << 30, "3.0 GiB"),
    ],
)
def test_human_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


def test_side_by_side() -> None:
    mib = 1 << 20
    runs = [
        PodRun("prewarmed lazy pod", 0.0, 2.031, layer_bytes=96 * mib // 10, image_bytes=55 * mib),
        PodRun("full pull", 10.0, 12.35, layer_bytes=55 * mib, image_bytes=55 * mib),
    ]
    assert side_by_side(runs).splitlines() == [
        "pod                 cold start  registry served for its layers",
        "prewarmed lazy pod      2.03 s  9.6 MiB of 55.0 MiB (17%)",
        "full pull               2.35 s  55.0 MiB of 55.0 MiB (100%)",
    ]
