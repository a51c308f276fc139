"""FuseSession in this process: mount, serve under trio, readahead, one per process, close.

The other tests run the server in a subprocess; this one drives the API directly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from lazyimage import estargz
from lazyimage.fusefs import FuseSession, LayerFilesystem, force_unmount, mounts_under
from lazyimage.layer import LayerTree, RemoteLayer

from tests.integration.fusefs.layers import build_layer
from tests.layercases import CASES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _layer(blob: Path) -> RemoteLayer:
    data = blob.read_bytes()
    toc = estargz.open_toc(lambda offset, size: data[offset : offset + size], len(data))

    async def read_chunks(chunks: Sequence[estargz.Chunk]) -> list[bytes]:
        return [estargz.verify_chunk(c, data[c.offset : c.end]) for c in chunks]

    return RemoteLayer(LayerTree(toc), read_chunks)


def test_session_serves_under_trio_and_unmounts(tmp_path: Path) -> None:
    blob = build_layer(CASES["everything"](), tmp_path / "everything.esgz")
    mountpoint = tmp_path / "mnt"
    fs = LayerFilesystem()
    seen: dict[str, Any] = {}

    async def main() -> None:
        with FuseSession(mountpoint, fs) as session:
            with pytest.raises(RuntimeError, match="already serves"):
                FuseSession(tmp_path / "other", LayerFilesystem())
            # The session answered its INIT already; anything but an INIT is refused.
            with pytest.raises(ValueError, match="not a FUSE_INIT request"):
                pyfuse3.process_init(bytes(40))
            async with trio.open_nursery() as nursery:
                await nursery.start(session.serve)
                bdi = Path(f"/sys/class/bdi/{session.mount.major}:{session.mount.minor}")
                seen["read_ahead_kb"] = int((bdi / "read_ahead_kb").read_text())
                path = fs.add_layer("everything", _layer(blob))
                seen["path"] = path
                seen["hostname"] = await trio.to_thread.run_sync((path / "etc/hostname").read_bytes)
                seen["mode"] = (
                    await trio.to_thread.run_sync(os.lstat, path / "var/removed")
                ).st_mode
                seen["names"] = fs.layer_names()
                seen["no_open"] = session.no_open
                await fs.remove_layer("everything")  # returns once the kernel forgot the name
                seen["removed"] = await trio.to_thread.run_sync(os.path.lexists, path)
                session.terminate()
        seen["after"] = [m.mountpoint for m in mounts_under(tmp_path)]

    try:
        trio.run(main)
    finally:
        force_unmount(tmp_path)
    assert seen["path"] == mountpoint / "everything"
    assert seen["hostname"] == b"lazyimage\n"
    assert stat.S_ISCHR(seen["mode"])
    assert seen["names"] == ["everything"]
    assert seen["no_open"] is True
    assert seen["read_ahead_kb"] == 1024
    assert seen["removed"] is False
    assert seen["after"] == []


def test_layer_names_are_checked(tmp_path: Path) -> None:
    fs = LayerFilesystem()
    blob = build_layer(CASES["hardlinks"](), tmp_path / "h.esgz")
    with pytest.raises(RuntimeError, match="not mounted"):
        fs.add_layer("a", _layer(blob))
    fs.mountpoint = tmp_path  # as a session would set it; nothing is mounted here
    for bad in ("", ".", "..", "a/b", "x" * 256):
        with pytest.raises(ValueError):
            fs.add_layer(bad, _layer(blob))
    assert fs.add_layer("a", _layer(blob)) == tmp_path / "a"
    with pytest.raises(ValueError, match="already mounted"):
        fs.add_layer("a", _layer(blob))
    trio.run(fs.remove_layer, "a")
    assert fs.layer_names() == []
