"""The eStargz footer (51 bytes) and the legacy stargz footer (47 bytes).

Both are an empty gzip member whose FEXTRA field carries the TOC offset as ``%016x`` plus
``STARGZ``. eStargz wraps it in an RFC 1952 subfield ``SG`` of length 22; legacy stargz
puts the 22 bytes directly in the extra field.
"""

from __future__ import annotations

import struct

from lazyimage.errors import FormatError

__all__ = ["FOOTER_SIZE", "LEGACY_FOOTER_SIZE", "make_footer", "parse_footer"]

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47

_MAGIC = b"STARGZ"
# gzip header: ID1 ID2 CM=8 FLG=FEXTRA MTIME=0 XFL=0 OS=255
_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
# An empty final stored block, then CRC32=0 and ISIZE=0.
_EMPTY_BODY = b"\x01\x00\x00\xff\xff" + b"\x00" * 8


def make_footer(toc_offset: int) -> bytes:
    if not 0 <= toc_offset < 1 << 64:
        raise ValueError(f"TOC offset {toc_offset} out of range")
    payload = b"%016x" % toc_offset + _MAGIC
    subfield = b"SG" + struct.pack("<H", len(payload)) + payload
    footer = _HEADER + struct.pack("<H", len(subfield)) + subfield + _EMPTY_BODY
    assert len(footer) == FOOTER_SIZE
    return footer


def _parse_offset(payload: bytes) -> int:
    if len(payload) != 22 or payload[16:] != _MAGIC:
        raise FormatError("footer lacks the STARGZ magic")
    digits = payload[:16]
    if not all(c in b"0123456789abcdefABCDEF" for c in digits):
        raise FormatError(f"footer TOC offset {digits!r} is not hexadecimal")
    return int(digits, 16)


def _check_envelope(footer: bytes, xlen: int) -> None:
    if footer[:4] != _HEADER[:4]:
        raise FormatError("footer is not a gzip member with an extra field")
    if struct.unpack_from("<H", footer, 10)[0] != xlen:
        raise FormatError("footer extra field has the wrong length")
    if footer[12 + xlen :] != _EMPTY_BODY:
        raise FormatError("footer gzip member is not empty")


def parse_footer(tail: bytes) -> tuple[int, int]:
    """Return ``(toc_offset, footer_size)`` from the last bytes of a blob.

    ``tail`` must hold at least the last 51 bytes (or the whole blob if shorter).
    """
    errors: list[str] = []
    if len(tail) >= FOOTER_SIZE:
        footer = tail[-FOOTER_SIZE:]
        try:
            _check_envelope(footer, 26)
            if footer[12:14] != b"SG" or struct.unpack_from("<H", footer, 14)[0] != 22:
                raise FormatError("footer extra field lacks the SG subfield")
            return _parse_offset(footer[16:38]), FOOTER_SIZE
        except FormatError as exc:
            errors.append(f"eStargz: {exc}")
    if len(tail) >= LEGACY_FOOTER_SIZE:
        footer = tail[-LEGACY_FOOTER_SIZE:]
        try:
            _check_envelope(footer, 22)
            return _parse_offset(footer[12:34]), LEGACY_FOOTER_SIZE
        except FormatError as exc:
            errors.append(f"legacy stargz: {exc}")
    else:
        errors.append(f"blob is only {len(tail)} bytes")
    raise FormatError("no eStargz footer: " + "; ".join(errors))
