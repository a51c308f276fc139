"""TOC entries and their JSON form, ``{"version": 1, "entries": [...]}``.

The JSON is written the way Go's ``json.MarshalIndent(toc, "", "\\t")`` writes the reference
TOC: fields in struct order, zero values omitted, HTML characters escaped, xattr values
base64. The TOC digest is the sha256 of these exact bytes, so matching Go's layout lets the
same entries give the same digest on both sides.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import posixpath
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from lazyimage.errors import FormatError

__all__ = [
    "ENTRY_TYPES",
    "TOCEntry",
    "clean_name",
    "decode_toc_json",
    "format_modtime",
    "parse_modtime",
    "parse_toc_json",
    "serialize_toc",
    "toc_digest",
]

# Most entries have no xattrs; one shared empty mapping saves a dict per entry.
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})
ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
_MAX_ENTRIES = 10_000_000

T = TypeVar("T")


@dataclass(slots=True)
class TOCEntry:
    """One record of the TOC: a tar entry, or a further chunk of a regular file."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: NO_XATTRS)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"name": self.name, "type": self.type}
        optional: list[tuple[str, Any]] = [
            ("size", self.size),
            ("modtime", self.modtime),
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("userName", self.user_name),
            ("groupName", self.group_name),
            ("offset", self.offset),
            ("innerOffset", self.inner_offset),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
        ]
        obj.update((key, value) for key, value in optional if value)
        if self.xattrs:
            obj["xattrs"] = {
                k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.xattrs.items())
            }
        tail = [
            ("digest", self.digest),
            ("chunkOffset", self.chunk_offset),
            ("chunkSize", self.chunk_size),
            ("chunkDigest", self.chunk_digest),
        ]
        obj.update((key, value) for key, value in tail if value)
        return obj


def clean_name(name: str) -> str:
    """Normalise a TOC or tar name (``./a/b/`` -> ``a/b``); reject names that leave the layer."""
    if "\x00" in name:
        raise FormatError(f"entry name {name!r} contains NUL")
    stripped = name[2:] if name.startswith("./") else name
    if stripped.startswith("/"):
        raise FormatError(f"entry name {name!r} is absolute")
    if ".." in stripped.split("/"):
        raise FormatError(f"entry name {name!r} contains '..'")
    cleaned = posixpath.normpath("/" + stripped).lstrip("/")
    return "" if cleaned == "." else cleaned


def format_modtime(mtime: float) -> str:
    """RFC 3339 UTC, rounded to the second as Go's ``Round(time.Second)``; '' for the epoch."""
    seconds = int(mtime + 0.5) if mtime >= 0 else -int(-mtime + 0.5)
    if seconds == 0:
        return ""
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_modtime(text: str) -> float:
    """Seconds since the epoch for an RFC 3339 time; 0 for ''."""
    if not text:
        return 0.0
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FormatError(f"invalid modtime {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _go_escape(text: str) -> str:
    # encoding/json escapes these even inside strings; json.dumps does not.
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def serialize_toc(entries: list[TOCEntry]) -> bytes:
    doc = {"version": 1, "entries": [entry.to_json() for entry in entries]}
    text = json.dumps(doc, indent="\t", ensure_ascii=False)
    return _go_escape(text).encode("utf-8", "surrogateescape")


def toc_digest(toc_json: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(toc_json).hexdigest()


def _int(obj: dict[str, Any], key: str, index: int) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"TOC entry {index}: {key} is not an integer")
    if value < 0:
        raise FormatError(f"TOC entry {index}: {key} is negative")
    return value


def _str(obj: dict[str, Any], key: str, index: int) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"TOC entry {index}: {key} is not a string")
    return value


def _xattrs(obj: dict[str, Any], index: int) -> Mapping[str, bytes]:
    raw = obj.get("xattrs") or {}
    if not raw:
        return NO_XATTRS
    if not isinstance(raw, dict):
        raise FormatError(f"TOC entry {index}: xattrs is not an object")
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise FormatError(f"TOC entry {index}: xattr {key!r} is not base64 text")
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError(f"TOC entry {index}: xattr {key!r} is not base64") from exc
    return out


def _entry_from(obj: dict[str, Any], index: int) -> TOCEntry:
    kind = _str(obj, "type", index)
    if kind not in ENTRY_TYPES:
        raise FormatError(f"TOC entry {index}: unknown type {kind!r}")
    name = _str(obj, "name", index)
    if not name:
        raise FormatError(f"TOC entry {index} has no name")
    return TOCEntry(
        name=name,
        type=sys.intern(kind),
        size=_int(obj, "size", index),
        modtime=sys.intern(_str(obj, "modtime", index)),  # many entries share a time
        link_name=_str(obj, "linkName", index),
        mode=_int(obj, "mode", index),
        uid=_int(obj, "uid", index),
        gid=_int(obj, "gid", index),
        user_name=_str(obj, "userName", index),
        group_name=_str(obj, "groupName", index),
        offset=_int(obj, "offset", index),
        inner_offset=_int(obj, "innerOffset", index),
        dev_major=_int(obj, "devMajor", index),
        dev_minor=_int(obj, "devMinor", index),
        xattrs=_xattrs(obj, index),
        digest=_str(obj, "digest", index),
        chunk_offset=_int(obj, "chunkOffset", index),
        chunk_size=_int(obj, "chunkSize", index),
        chunk_digest=_str(obj, "chunkDigest", index),
    )


def decode_toc_json(
    data: bytes | str, on_entry: Callable[[TOCEntry, int], T], kind: type[T]
) -> list[T]:
    """Decode TOC JSON, handing each entry to ``on_entry`` as soon as the decoder meets it.

    Returns the document's entries as ``on_entry`` returned them (each an instance of
    ``kind``, which no JSON value is). Any malformed input raises FormatError.
    """
    count = 0

    def hook(obj: dict[str, Any]) -> Any:
        nonlocal count
        if "type" in obj and "name" in obj and "entries" not in obj:
            count += 1
            if count > _MAX_ENTRIES:
                raise FormatError(f"TOC has more than {_MAX_ENTRIES} entries")
            return on_entry(_entry_from(obj, count - 1), count - 1)
        return obj

    try:
        doc = json.loads(data, object_hook=hook)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"TOC is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError("TOC is not a JSON object")
    if doc.get("version") != 1:
        raise FormatError(f"unsupported TOC version {doc.get('version')!r}")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise FormatError("TOC has no entries list")
    for index, entry in enumerate(raw_entries):
        if not isinstance(entry, kind):
            raise FormatError(f"TOC entry {index} is not an object with a name and a type")
    return raw_entries


def parse_toc_json(data: bytes | str) -> list[TOCEntry]:
    """Parse TOC JSON into entries. Any malformed input raises FormatError.

    Entry objects become TOCEntry as the decoder meets them, so the whole TOC never exists
    as dicts at once: for a 100k-entry TOC that halves the parse's peak memory.
    """
    return decode_toc_json(data, lambda entry, _index: entry, TOCEntry)
