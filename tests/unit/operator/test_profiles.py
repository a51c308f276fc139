"""Which reported startup profiles replace a LazyImage's."""

from __future__ import annotations

from lazyimage_operator.naming import lazyimage_name
from lazyimage_operator.profiles import newer_profiles

IMAGE = "reg.local:5000/app:1"
LAYERS = [{"digest": "sha256:" + "a" * 64, "paths": ["usr/bin/app"]}]


def _status(*recorded: str) -> dict[str, object]:
    return {
        "profiles": [
            {"image": IMAGE, "recorded": when, "files": 1, "layers": LAYERS} for when in recorded
        ]
    }


def test_a_newer_profile_replaces_an_older_one() -> None:
    name = lazyimage_name(IMAGE)
    known = {name: "2026-11-28T12:00:00.000000Z"}
    found = newer_profiles("n1", _status("2026-11-28T12:00:05.000000Z"), lambda n: known[n])
    assert found == {
        name: {
            "node": "n1",
            "recorded": "2026-11-28T12:00:05.000000Z",
            "layers": LAYERS,
            "files": 1,
        }
    }


def test_an_older_or_equal_profile_changes_nothing() -> None:
    name = lazyimage_name(IMAGE)
    known = {name: "2026-11-28T12:00:05.000000Z"}.get
    assert (
        newer_profiles("n1", _status("2026-11-28T12:00:05.000000Z"), lambda n: known(n, "")) == {}
    )
    assert (
        newer_profiles("n1", _status("2026-11-28T11:00:00.000000Z"), lambda n: known(n, "")) == {}
    )


def test_the_newest_of_several_wins_and_malformed_ones_are_skipped() -> None:
    status = _status("2026-11-28T12:00:01.000000Z", "2026-11-28T12:00:09.000000Z")
    status["profiles"] += [
        {"image": IMAGE},
        "junk",
        {"image": IMAGE, "recorded": "x", "layers": []},
    ]  # type: ignore[operator]
    found = newer_profiles("n2", status, lambda _: "")
    assert found[lazyimage_name(IMAGE)]["recorded"] == "2026-11-28T12:00:09.000000Z"
