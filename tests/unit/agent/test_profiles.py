"""The agent's profile book: a layer's reads within the window, taken once it has been mounted
that long, grouped by image, bounded."""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyimage.agent.profiles import MAX_PROFILES, ProfileBook, profile_paths
from lazyimage.layer import ProfileEntry


@dataclass
class Layer:
    image: str
    digest: str
    mounted_for: float
    entries: list[ProfileEntry] = field(default_factory=list)

    def reads(self) -> list[ProfileEntry]:
        return list(self.entries)


def test_reads_within_the_window_are_taken_once_the_window_has_passed() -> None:
    book = ProfileBook(window=10)
    layer = Layer("reg/app:1", "sha256:a", 5, [ProfileEntry("bin/app", 0.1)])
    assert not book.collect([layer], "T1")  # mounted for 5 s of 10: too early
    layer.mounted_for = 11
    layer.entries.append(ProfileEntry("late/file", 10.5))  # read after the window
    assert book.collect([layer], "T2")
    [profile] = book.to_status()
    assert profile["image"] == "reg/app:1" and profile["recorded"] == "T2"
    assert profile["layers"] == [{"digest": "sha256:a", "paths": ["bin/app"]}]
    assert profile["files"] == 1 and profile["windowSeconds"] == 10
    assert not book.collect([layer], "T3")  # taken once


def test_layers_of_one_image_join_one_profile_and_idle_layers_add_nothing() -> None:
    book = ProfileBook(window=1)
    layers = [
        Layer("reg/app:1", "sha256:a", 2, [ProfileEntry("a", 0.0)]),
        Layer("reg/app:1", "sha256:b", 2, [ProfileEntry("b", 0.5)]),
        Layer("reg/app:1", "sha256:c", 2, []),
    ]
    assert book.collect(layers, "T")
    [profile] = book.to_status()
    assert [layer["digest"] for layer in profile["layers"]] == ["sha256:a", "sha256:b"]


def test_only_the_newest_profiles_are_kept() -> None:
    book = ProfileBook(window=1)
    for i in range(MAX_PROFILES + 3):
        book.collect([Layer(f"reg/app:{i}", "sha256:a", 2, [ProfileEntry("f", 0)])], f"T{i}")
    images = [profile["image"] for profile in book.to_status()]
    assert len(images) == MAX_PROFILES and images[-1] == f"reg/app:{MAX_PROFILES + 2}"


def test_profile_paths_reads_a_lazyimage_profile_and_skips_junk() -> None:
    profile = {
        "layers": [
            {"digest": "sha256:a", "paths": ["x", 3, "y"]},
            {"digest": 5, "paths": ["z"]},
            "junk",
            {"digest": "sha256:b", "paths": []},
        ]
    }
    assert profile_paths(profile) == {"sha256:a": ["x", "y"]}
    assert profile_paths(None) == {}
