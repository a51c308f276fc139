"""Inode numbers for one mount serving many layers: ``(layer slot << 32) | node id``.

Slot 0 is the mount's root directory (inode 1, FUSE's root); layers get slots 1, 2, ...
and a slot is never reused while the mount lives, so an inode the kernel still holds for a
removed layer can never name a file of a newer one. An agent that takes over a mount puts
each layer back in the slot it had (``add(..., number=)``) and goes on numbering from where
the earlier one stopped (``resume``), so the kernel's inode numbers stay valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MAX_NODES", "ROOT_INODE", "LayerSlots", "Slot", "inode", "split"]

ROOT_INODE = 1  # FUSE_ROOT_ID
_SHIFT = 32
MAX_NODES = 1 << _SHIFT
_MAX_SLOTS = 1 << 31

T = TypeVar("T")


def inode(slot: int, node_id: int) -> int:
    return (slot << _SHIFT) | node_id


def split(ino: int) -> tuple[int, int]:
    """``(slot, node id)`` of an inode number; slot 0 is the mount's root."""
    return ino >> _SHIFT, ino & (MAX_NODES - 1)


@dataclass(frozen=True, slots=True)
class Slot(Generic[T]):
    number: int
    name: str
    value: T


class LayerSlots(Generic[T]):
    """Named entries of the mount's root, each with a slot number that is never reused."""

    def __init__(self) -> None:
        self._by_slot: dict[int, Slot[T]] = {}
        self._by_name: dict[str, Slot[T]] = {}
        self._next = 1

    @property
    def next_number(self) -> int:
        """The number the next new slot gets."""
        return self._next

    def resume(self, next_number: int) -> None:
        """Never hand out numbers below ``next_number`` (used by an earlier server)."""
        self._next = max(self._next, next_number)

    def add(self, name: str, value: T, *, number: int | None = None) -> Slot[T]:
        """A new slot for ``name``: the next number, or ``number`` when restoring one."""
        if name in self._by_name:
            raise ValueError(f"a layer named {name!r} is already mounted")
        if number is None:
            number = self._next
        elif number < 1 or number in self._by_slot:
            raise ValueError(f"slot {number} is taken or invalid")
        if number >= _MAX_SLOTS:
            raise RuntimeError("no layer slots left in this mount")
        slot = Slot(number, name, value)
        self._next = max(self._next, number + 1)
        self._by_slot[slot.number] = slot
        self._by_name[name] = slot
        return slot

    def remove(self, name: str) -> Slot[T]:
        slot = self._by_name.pop(name)
        del self._by_slot[slot.number]
        return slot

    def get(self, number: int) -> Slot[T] | None:
        return self._by_slot.get(number)

    def named(self, name: str) -> Slot[T] | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Slot[T]]:
        """Slots in slot order (restored slots may have been added in any order)."""
        return iter(sorted(self._by_slot.values(), key=lambda slot: slot.number))

    def __len__(self) -> int:
        return len(self._by_slot)
