"""The mount book round-trips, survives a torn or foreign file, and slots come back."""

from __future__ import annotations

import json
from pathlib import Path

from lazyimage.agent.mountbook import BookedLayer, MountBook
from lazyimage.fusefs._inodes import LayerSlots

LAYER = BookedLayer("abc", 7, "reg.test/app:1", "sha256:" + "a" * 64, "sha256:" + "b" * 64, 10, 2)


def test_the_book_round_trips_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    book = MountBook(tmp_path / "mounts.json")
    assert book.load() == ([], 1)
    book.save([LAYER], 9)
    assert book.load() == ([LAYER], 9)
    book.path.write_text('{"version": 1, "nextSlot": 3, "layers": [{"name": "x"}]}')
    assert book.load() == ([], 3)  # an entry it cannot read is left out, not guessed
    book.path.write_text("{not json")
    assert book.load() == ([], 1)
    book.clear()
    assert book.load() == ([], 1)


def test_slots_restored_out_of_order_keep_their_numbers() -> None:
    slots: LayerSlots[str] = LayerSlots()
    slots.resume(9)
    slots.add("b", "B", number=5)
    slots.add("a", "A", number=2)
    assert [(slot.number, slot.name) for slot in slots] == [(2, "a"), (5, "b")]
    assert slots.add("c", "C").number == 9  # never a number an earlier server used


def test_other_repositories_of_a_shared_layer_are_kept_and_older_books_still_load(
    tmp_path: Path,
) -> None:
    book = MountBook(tmp_path / "mounts.json")
    shared = BookedLayer(
        "abc", 7, "reg.test/a/app:1", LAYER.digest, LAYER.toc_digest, 10, 2,
        also=("reg.test/b/app:1",),
    )  # fmt: skip
    book.save([shared], 9)
    assert book.load() == ([shared], 9)
    # A book written before the field existed.
    entry = {k: v for k, v in vars(LAYER).items() if k != "also"}
    book.path.write_text(json.dumps({"version": 1, "nextSlot": 2, "layers": [entry]}))
    assert book.load() == ([LAYER], 2)
