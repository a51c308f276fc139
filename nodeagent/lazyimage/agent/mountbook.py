"""The book of layers served on the agent's mount, kept on disk for the next agent.

A restarted agent that takes the mount over (``FuseSession.adopted``) must serve every
layer in the inode slot it had, since the kernel, and every container reading through
the mount, still hold those inode numbers. The book records, for each served layer, its
slot, what names it (image, digest, TOC digest, size) and how many users it had, and the
next free slot. It is rewritten (atomically: a temporary file, fsync, rename) whenever a
layer comes or goes; a fresh mount starts a new book.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

__all__ = ["BookedLayer", "MountBook"]

log = structlog.get_logger(__name__)

_VERSION = 1


@dataclass(frozen=True)
class BookedLayer:
    name: str
    slot: int
    ref: str
    digest: str
    toc_digest: str
    size: int
    users: int
    # Other repositories the layer is read through when its own refuses (images sharing it).
    also: tuple[str, ...] = ()


class MountBook:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[list[BookedLayer], int]:
        """The booked layers and the next free slot; nothing if there is no readable book."""
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return [], 1
        except (OSError, ValueError) as exc:
            log.warning("mount_book_unreadable", path=str(self.path), error=str(exc))
            return [], 1
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            log.warning("mount_book_unknown", path=str(self.path))
            return [], 1
        layers: list[BookedLayer] = []
        for entry in raw.get("layers") or []:
            try:
                layers.append(BookedLayer(**{**entry, "also": tuple(entry.get("also") or ())}))
            except (TypeError, AttributeError) as exc:
                log.warning("mount_book_entry_refused", entry=entry, error=str(exc))
        next_slot = raw.get("nextSlot")
        return layers, next_slot if isinstance(next_slot, int) and next_slot > 0 else 1

    def save(self, layers: list[BookedLayer], next_slot: int) -> None:
        body = {
            "version": _VERSION,
            "nextSlot": next_slot,
            "layers": [asdict(layer) for layer in layers],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as out:
            out.write(json.dumps(body, indent=1).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def clear(self) -> None:
        self.save([], 1)
