"""Reading eStargz blobs through ranges: find the TOC, verify chunks, read files.

Nothing here does I/O itself. Callers hand in bytes, or a ``read_at(offset, length)``
callable, so the same code serves local files, registry ranges and the lazy filesystem.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator

from isal import isal_zlib

from lazyimage import names
from lazyimage.errors import FormatError, VerificationError
from lazyimage.estargz._footer import FOOTER_SIZE, LEGACY_FOOTER_SIZE, parse_footer
from lazyimage.estargz._gzip import INFLATE_ERRORS, inflate_members
from lazyimage.estargz._index import TOC, Chunk, Node
from lazyimage.estargz._toc import parse_toc_json, toc_digest
from lazyimage.estargz._walk import S, TOCInfo, walk_toc_json

__all__ = [
    "DEFAULT_TAIL_SIZE",
    "MAX_TOC_SIZE",
    "ReadAt",
    "TOCLoader",
    "iter_file",
    "open_toc",
    "parse_toc_member",
    "read_file",
    "verify_chunk",
    "walk_toc_member",
]

ReadAt = Callable[[int, int], bytes]

# The first read takes this much of the blob's end: the footer, and for a typical layer the
# whole TOC member too, so opening a layer costs one range read and at most two.
DEFAULT_TAIL_SIZE = 512 << 10
MAX_TOC_SIZE = 512 << 20
_TAR_BLOCK = 512


def _toc_json(member: bytes, expected_digest: str) -> tuple[str, str]:
    """The TOC JSON in the gzip member holding the TOC tar entry, as text, and its digest."""
    inflater = isal_zlib.decompressobj(31)
    try:
        data = inflater.decompress(member, MAX_TOC_SIZE + _TAR_BLOCK)
    except INFLATE_ERRORS as exc:
        raise FormatError(f"TOC member is not valid gzip: {exc}") from exc
    if inflater.unconsumed_tail:
        raise FormatError(f"TOC is larger than {MAX_TOC_SIZE} bytes")
    if len(data) < _TAR_BLOCK:
        raise FormatError("TOC member is shorter than a tar header")
    try:
        header = tarfile.TarInfo.frombuf(data[:_TAR_BLOCK], "utf-8", "surrogateescape")
    except tarfile.TarError as exc:
        raise FormatError(f"TOC tar header is invalid: {exc}") from exc
    if header.name != names.TOC_TAR_NAME:
        raise FormatError(f"TOC tar entry is {header.name!r}, not {names.TOC_TAR_NAME!r}")
    # A large TOC is tens of MB: hash and decode it in place rather than copy it out first.
    with memoryview(data) as whole, whole[_TAR_BLOCK : _TAR_BLOCK + header.size] as toc_json:
        if len(toc_json) != header.size:
            raise FormatError(f"TOC is truncated: {len(toc_json)} of {header.size} bytes")
        digest = toc_digest(toc_json)
        if expected_digest and digest != expected_digest:
            raise VerificationError(
                f"TOC digest {digest} does not match expected {expected_digest}"
            )
        # What json.loads does with bytes, without the copy.
        encoding = json.detect_encoding(bytes(toc_json[:4]))
        try:
            text = str(toc_json, encoding, "surrogatepass")
        except UnicodeDecodeError as exc:
            raise FormatError(f"TOC is not valid JSON: {exc}") from exc
    return text, digest


def parse_toc_member(member: bytes, *, toc_offset: int, expected_digest: str = "") -> TOC:
    """Parse the gzip member holding the TOC tar entry (footer excluded)."""
    text, digest = _toc_json(member, expected_digest)
    return TOC(parse_toc_json(text), digest, toc_offset)


def walk_toc_member(
    member: bytes, make_sink: Callable[[], S], *, toc_offset: int, expected_digest: str = ""
) -> tuple[S, TOCInfo]:
    """Like ``parse_toc_member``, into a sink: no entry, and no TOC tree, is kept."""
    text, digest = _toc_json(member, expected_digest)
    return walk_toc_json(text, digest, toc_offset, make_sink)


class TOCLoader:
    """Plans the (at most two) range reads that fetch a blob's footer and TOC.

    >>> loader = TOCLoader(blob_size)
    >>> rest = loader.feed_tail(read(*loader.tail_range))
    >>> if rest: loader.feed_rest(read(*rest))
    >>> toc = loader.toc()
    """

    def __init__(
        self, blob_size: int, *, tail_size: int = DEFAULT_TAIL_SIZE, expected_digest: str = ""
    ) -> None:
        if blob_size < LEGACY_FOOTER_SIZE:
            raise FormatError(f"blob of {blob_size} bytes is too small to be eStargz")
        self.blob_size = blob_size
        self.expected_digest = expected_digest
        length = min(blob_size, max(tail_size, FOOTER_SIZE))
        self.tail_range = (blob_size - length, length)
        self._tail = b""
        self._toc_offset = -1
        self._footer_size = 0
        self._member = b""

    def feed_tail(self, tail: bytes | memoryview) -> tuple[int, int] | None:
        """Take the tail read; return the range still needed for the TOC, if any."""
        tail = bytes(tail)  # a footer, or a TOC: small, and parsed as bytes
        if len(tail) != self.tail_range[1]:
            raise FormatError(f"tail read returned {len(tail)} of {self.tail_range[1]} bytes")
        self._tail = tail
        toc_offset, footer_size = parse_footer(tail)
        member_end = self.blob_size - footer_size
        if toc_offset >= member_end:
            raise FormatError(
                f"footer TOC offset {toc_offset} is past the end of the blob ({self.blob_size})"
            )
        self._toc_offset, self._footer_size = toc_offset, footer_size
        tail_start = self.tail_range[0]
        if toc_offset >= tail_start:
            self._member = tail[toc_offset - tail_start : member_end - tail_start]
            return None
        return (toc_offset, tail_start - toc_offset)

    def feed_rest(self, data: bytes | memoryview) -> None:
        tail_start = self.tail_range[0]
        if len(data) != tail_start - self._toc_offset:
            raise FormatError(f"TOC read returned {len(data)} bytes")
        member_end = self.blob_size - self._footer_size
        self._member = bytes(data) + self._tail[: member_end - tail_start]

    @property
    def toc_offset(self) -> int:
        return self._toc_offset

    def toc(self) -> TOC:
        if self._toc_offset < 0:
            raise FormatError("TOC requested before the blob's tail was read")
        return parse_toc_member(
            self._member, toc_offset=self._toc_offset, expected_digest=self.expected_digest
        )

    def walk(self, make_sink: Callable[[], S]) -> tuple[S, TOCInfo]:
        """The TOC walked into a new sink (``walk_toc_member``), instead of a TOC tree."""
        if self._toc_offset < 0:
            raise FormatError("TOC requested before the blob's tail was read")
        return walk_toc_member(
            self._member,
            make_sink,
            toc_offset=self._toc_offset,
            expected_digest=self.expected_digest,
        )


def open_toc(
    read_at: ReadAt,
    blob_size: int,
    *,
    expected_digest: str = "",
    tail_size: int = DEFAULT_TAIL_SIZE,
) -> TOC:
    """Read and parse a blob's TOC with at most two calls of ``read_at``."""
    loader = TOCLoader(blob_size, tail_size=tail_size, expected_digest=expected_digest)
    rest = loader.feed_tail(read_at(*loader.tail_range))
    if rest is not None:
        loader.feed_rest(read_at(*rest))
    return loader.toc()


def verify_chunk(chunk: Chunk, compressed: bytes | memoryview) -> bytes:
    """Inflate ``compressed`` (the blob's bytes [chunk.offset, chunk.end)) and verify it.

    Returns the chunk's uncompressed bytes, or raises VerificationError / FormatError.
    Unverified bytes never leave this function.
    """
    what = f"chunk of {chunk.path!r} at {chunk.chunk_offset}"
    data = inflate_members(compressed, chunk.inner_offset, chunk.size, what=what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != chunk.digest:
        raise VerificationError(f"{what}: digest {actual} does not match {chunk.digest}")
    return data


def iter_file(node: Node, read_at: ReadAt) -> Iterator[bytes]:
    """A regular file's content, chunk by chunk, each verified before it is yielded.

    After the last chunk the whole-file digest is checked too.
    """
    whole = hashlib.sha256()
    for chunk in node.chunks:
        data = verify_chunk(chunk, read_at(chunk.offset, chunk.end - chunk.offset))
        whole.update(data)
        yield data
    if node.entry.digest and "sha256:" + whole.hexdigest() != node.entry.digest:
        raise VerificationError(
            f"file {node.path!r}: content digest does not match {node.entry.digest}"
        )


def read_file(node: Node, read_at: ReadAt) -> bytes:
    """The whole content of a (small) regular file, verified."""
    return b"".join(iter_file(node, read_at))
