"""Inode numbers for one mount serving many layers: ``(layer slot << 32) | node id``.

Slot 0 is the mount's root directory (inode 1, FUSE's root); layers get slots 1, 2, ...
and a slot is never reused while the process lives, so an inode the kernel still holds
for a removed layer can never name a file of a newer one.
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

    def add(self, name: str, value: T) -> Slot[T]:
        if name in self._by_name:
            raise ValueError(f"a layer named {name!r} is already mounted")
        if self._next >= _MAX_SLOTS:
            raise RuntimeError("no layer slots left in this process")
        slot = Slot(self._next, name, value)
        self._next += 1
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
        """Slots in slot order (dicts keep insertion order, and slot numbers only grow)."""
        return iter(list(self._by_slot.values()))

    def __len__(self) -> int:
        return len(self._by_slot)
