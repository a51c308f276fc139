"""A FUSE server for tests: one ``FuseSession`` serving layers read from local blob files.

    python tests/integration/fusefs/serve.py MOUNTPOINT [--open-round-trip]

Each layer's chunk reader reads the blob file and verifies every chunk with
``estargz.verify_chunk`` (the real fetcher is not involved). Commands arrive on stdin and
answers leave on stdout, one JSON object per line; logs are JSON lines on stderr.

    {"op": "add", "name": N, "blob": PATH}   -> {"ok": true, "path": MOUNTPOINT/N}
    {"op": "remove", "name": N}              -> {"ok": true}
    {"op": "profile", "name": N}             -> {"ok": true, "profile": [[path, seconds], ...]}
    {"op": "fail", "name": N, "on": true}    -> the layer's reader raises UnavailableError
    {"op": "stats"}                          -> {"ok": true, "ops": {op: count}, "chunk_reads": n}
    {"op": "quit"}                           -> {"ok": true}; then unmounts and exits

The first line written is {"ready": true, "pid": ..., "no_open": ..., "connection": ...}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio
from lazyimage import estargz, metrics
from lazyimage.errors import UnavailableError
from lazyimage.fusefs import FuseSession, LayerFilesystem
from lazyimage.layer import AccessRecorder, LayerTree, RemoteLayer

OPERATIONS = (
    "lookup",
    "getattr",
    "opendir",
    "readdir",
    "releasedir",
    "open",
    "read",
    "release",
    "getxattr",
    "listxattr",
    "statfs",
)
_CACHED_CHUNKS = 8


class BlobReader:
    """Verified chunks from a blob file, with a few recent chunks kept decompressed."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.failing = False
        self.chunk_reads = 0
        self._lock = threading.Lock()
        self._recent: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def _chunk(self, chunk: estargz.Chunk) -> bytes:
        key = (chunk.offset, chunk.inner_offset)
        with self._lock:
            data = self._recent.get(key)
            if data is not None:
                self._recent.move_to_end(key)
                return data
            self.chunk_reads += 1
        data = estargz.verify_chunk(chunk, self.read_at(chunk.offset, chunk.end - chunk.offset))
        with self._lock:
            self._recent[key] = data
            while len(self._recent) > _CACHED_CHUNKS:
                self._recent.popitem(last=False)
        return data

    async def read(self, chunks: Sequence[estargz.Chunk]) -> list[bytes]:
        if self.failing:
            raise UnavailableError("injected failure", what="chunk")
        return await trio.to_thread.run_sync(lambda: [self._chunk(c) for c in chunks])


def open_layer(blob: Path) -> tuple[RemoteLayer, BlobReader]:
    reader = BlobReader(blob)
    toc = estargz.open_toc(reader.read_at, reader.size)
    tree = LayerTree(toc)
    del toc  # the tree keeps what it needs
    return RemoteLayer(tree, reader.read, AccessRecorder()), reader


def reply(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def op_counts() -> dict[str, int]:
    counts = {}
    for op in OPERATIONS:
        value = metrics.REGISTRY.get_sample_value(
            "lazyimage_fuse_operation_duration_seconds_count", {"operation": op}
        )
        counts[op] = int(value or 0)
    return counts


async def commands(session: FuseSession, readers: dict[str, BlobReader]) -> None:
    fs = session.fs
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        data = await stream.receive_some()
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            op = command["op"]
            try:
                if op == "add":
                    blob = Path(command["blob"])
                    layer, reader = await trio.to_thread.run_sync(open_layer, blob)
                    readers[command["name"]] = reader
                    reply(ok=True, path=str(fs.add_layer(command["name"], layer)))
                elif op == "remove":
                    await fs.remove_layer(command["name"])
                    os.close(readers.pop(command["name"]).fd)
                    reply(ok=True)
                elif op == "profile":
                    found = fs.layer(command["name"])
                    assert found is not None, command["name"]
                    reply(ok=True, profile=[list(e) for e in found.recorder.profile()])
                elif op == "fail":
                    readers[command["name"]].failing = bool(command["on"])
                    reply(ok=True)
                elif op == "stats":
                    chunk_reads = sum(r.chunk_reads for r in readers.values())
                    reply(ok=True, ops=op_counts(), chunk_reads=chunk_reads)
                elif op == "quit":
                    reply(ok=True)
                    return
                else:
                    reply(ok=False, error=f"unknown op {op!r}")
            except Exception as exc:
                reply(ok=False, error=f"{type(exc).__name__}: {exc}")


async def main(args: argparse.Namespace) -> None:
    fs = LayerFilesystem()
    readers: dict[str, BlobReader] = {}
    with FuseSession(args.mountpoint, fs, no_open=not args.open_round_trip) as session:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)
            reply(
                ready=True,
                pid=os.getpid(),
                no_open=session.no_open,
                connection=session.mount.connection,
            )
            await commands(session, readers)
            session.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--open-round-trip", action="store_true")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    trio.run(main, parser.parse_args())
