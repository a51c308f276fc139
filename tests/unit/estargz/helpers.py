"""Building blobs from layer cases and reading them back, for the estargz tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lazyimage import estargz

from tests.layercases import CASES, Item, write_tar


@dataclass
class Built:
    items: list[Item]
    blob: bytes
    result: estargz.BuildResult
    reads: list[tuple[int, int]]

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.blob[offset : offset + length]

    def toc(self) -> estargz.TOC:
        return estargz.open_toc(
            self.read_at, len(self.blob), expected_digest=self.result.toc_digest
        )


def build_case(tmp_path: Path, name: str, options: estargz.BuildOptions | None = None) -> Built:
    items = CASES[name]()
    tar = write_tar(items, tmp_path / f"{name}.tar")
    out = tmp_path / f"{name}.esgz"
    with open(out, "wb") as f:
        result = estargz.build(tar, f, options)
    return Built(items, out.read_bytes(), result, [])
