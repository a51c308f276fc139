"""The eStargz format: footer, TOC, chunk lookup and verification, and the blob writer.

Pure format code: no HTTP, FUSE or gRPC. Readers take bytes or a ``read_at`` callable.
"""

from lazyimage.estargz._footer import FOOTER_SIZE, LEGACY_FOOTER_SIZE, make_footer, parse_footer
from lazyimage.estargz._index import ROOT_ID, TOC, Chunk, Node
from lazyimage.estargz._priority import PriorityMatcher, read_priority_list
from lazyimage.estargz._reader import (
    DEFAULT_TAIL_SIZE,
    ReadAt,
    TOCLoader,
    iter_file,
    open_toc,
    parse_toc_member,
    read_file,
    verify_chunk,
    walk_toc_member,
)
from lazyimage.estargz._source import detect_compression
from lazyimage.estargz._toc import (
    TOCEntry,
    clean_name,
    parse_modtime,
    parse_toc_json,
    serialize_toc,
    toc_digest,
)
from lazyimage.estargz._walk import TOCInfo, TOCSink, TOCWalker, walk_toc_json
from lazyimage.estargz._writer import BuildOptions, BuildResult, build

__all__ = [
    "DEFAULT_TAIL_SIZE",
    "FOOTER_SIZE",
    "LEGACY_FOOTER_SIZE",
    "ROOT_ID",
    "TOC",
    "BuildOptions",
    "BuildResult",
    "Chunk",
    "Node",
    "PriorityMatcher",
    "ReadAt",
    "TOCEntry",
    "TOCInfo",
    "TOCLoader",
    "TOCSink",
    "TOCWalker",
    "build",
    "clean_name",
    "detect_compression",
    "iter_file",
    "make_footer",
    "open_toc",
    "parse_footer",
    "parse_modtime",
    "parse_toc_json",
    "parse_toc_member",
    "read_file",
    "read_priority_list",
    "serialize_toc",
    "toc_digest",
    "verify_chunk",
    "walk_toc_json",
    "walk_toc_member",
]
