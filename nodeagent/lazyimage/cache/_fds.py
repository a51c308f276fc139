"""A small LRU of open chunk fds, so reads are one ``pread`` and not open+read+close.

The hazard is fd-number reuse: if an fd were closed while a reader still held its number,
the next ``open`` anywhere in the process could get that number and the reader would
``pread`` another file. So fds are reference-counted: dropping a handle (LRU overflow,
eviction, a failed check) only closes its fd once no reader holds it.

Not thread-safe on its own; ``ChunkCache`` calls it under its lock and closes the fds it
is handed outside the lock.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FdTable", "Handle"]


class Handle:
    __slots__ = ("fd", "live", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1
        self.live = True  # still in the table; once False, the last release closes the fd


class FdTable:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the fd table needs at least one slot, not {limit}")
        self._limit = limit
        self._handles: OrderedDict[bytes, Handle] = OrderedDict()

    def __len__(self) -> int:
        return len(self._handles)

    def borrow(self, key: bytes) -> Handle | None:
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            handle.refs += 1
        return handle

    def adopt(self, key: bytes, fd: int, to_close: list[int]) -> Handle:
        """Add a freshly opened fd, borrowed once. If another reader raced us to it, use
        theirs and close ours. Fds pushed out of the LRU go to ``to_close``."""
        existing = self.borrow(key)
        if existing is not None:
            to_close.append(fd)
            return existing
        handle = Handle(fd)
        self._handles[key] = handle
        while len(self._handles) > self._limit:
            _, old = self._handles.popitem(last=False)
            self._retire(old, to_close)
        return handle

    def release(self, handle: Handle, to_close: list[int]) -> None:
        handle.refs -= 1
        if handle.refs == 0 and not handle.live:
            to_close.append(handle.fd)

    def drop(self, key: bytes, to_close: list[int]) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            self._retire(handle, to_close)

    def drop_all(self, to_close: list[int]) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            self._retire(handle, to_close)

    @staticmethod
    def _retire(handle: Handle, to_close: list[int]) -> None:
        handle.live = False
        if handle.refs == 0:
            to_close.append(handle.fd)
