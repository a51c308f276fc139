"""Small eStargz layers for the FUSE tests, built from ``tests.layercases`` items."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from lazyimage import estargz
from zlib_ng import zlib_ng

from tests.layercases import Item, write_tar

__all__ = ["build_layer", "forge_chunk", "small_files"]


def build_layer(items: list[Item], path: Path, *, level: int = 1) -> Path:
    tar = write_tar(items, path.with_suffix(".tar"))
    with open(path, "wb") as f:
        estargz.build(tar, f, estargz.BuildOptions(level=level))
    tar.unlink()
    return path


def small_files(count: int, size: int = 4096, *, per_dir: int = 500) -> list[Item]:
    """``count`` files of ``size`` random bytes, ``per_dir`` to a directory."""
    rng = random.Random(count)
    items = []
    for d in range(-(-count // per_dir)):
        items.append(Item(f"d{d:03d}", "dir", mode=0o755))
        for f in range(min(per_dir, count - d * per_dir)):
            items.append(Item(f"d{d:03d}/f{f:04d}", "reg", rng.randbytes(size)))
    return items


def forge_chunk(blob: Path, file: str) -> None:
    """Replace ``file``'s bytes in the blob with other bytes, in a valid gzip member.

    The member keeps its length and has a correct CRC, so it inflates fine and only the
    TOC's chunk digest can tell. Needs a blob built with ``level=0`` (stored blocks, whose
    length depends only on the data's length).
    """
    data = bytearray(blob.read_bytes())
    toc = estargz.open_toc(lambda o, n: bytes(data[o : o + n]), len(data))
    node = toc.lookup(file)
    assert node is not None and len(node.chunks) == 1
    chunk = node.chunks[0]
    inflater = zlib.decompressobj(31)
    plain = bytearray(inflater.decompress(bytes(data[chunk.offset : chunk.end])))
    end = chunk.inner_offset + chunk.size
    assert inflater.eof and len(plain) >= end
    plain[chunk.inner_offset : end] = bytes(b ^ 0x55 for b in plain[chunk.inner_offset : end])
    forged = zlib_ng.compress(plain, 0, 31) + inflater.unused_data
    assert len(forged) == chunk.end - chunk.offset, "the forged member differs in length"
    data[chunk.offset : chunk.end] = forged
    blob.write_bytes(data)
