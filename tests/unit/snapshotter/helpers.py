"""A fake RemoteFS: stands in for the lazy filesystem, which the snapshotter only calls."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["FakeRemote"]


class FakeRemote:
    """A RemoteFS that "mounts" a layer by handing out a directory of its own."""

    def __init__(self, base: Path, *, accept: bool = True, fail: str = "") -> None:
        self.base = base
        self.accept = accept
        self.fail = fail
        self.unavailable: set[str] = set()
        self.mounted: dict[str, Path] = {}
        self.calls: list[tuple[str, str]] = []

    def mount(self, name: str, labels: Mapping[str, str]) -> Path | None:
        self.calls.append(("mount", name))
        if self.fail:
            raise OSError(self.fail)
        if not self.accept:
            return None
        path = self.base / name.replace("/", "_")
        path.mkdir(parents=True, exist_ok=True)
        self.mounted[name] = path
        return path

    def check(self, name: str, labels: Mapping[str, str]) -> None:
        self.calls.append(("check", name))
        if name in self.unavailable:
            raise ConnectionError("registry unreachable")

    def unmount(self, name: str) -> None:
        self.calls.append(("unmount", name))
        del self.mounted[name]
