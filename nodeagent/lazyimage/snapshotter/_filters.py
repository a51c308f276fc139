"""containerd's filter expressions, as List receives them.

A filter string is selectors joined by ``,``; all of them must match (AND). A List request
carries several strings; a snapshot is listed when any of them matches (OR). A selector is

    fieldpath                 the field is present         labels.l
    fieldpath == value        present and equal            kind==committed
    fieldpath != value        not equal (absent is "")     parent!=""
    fieldpath ~= value        regular expression search    name~=/^ex/

A fieldpath is fields joined by ``.``: a field is ``[A-Za-z0-9_]+`` or a double-quoted string,
so ``labels."containerd.io/snapshot.ref"`` is the two fields ``labels`` and
``containerd.io/snapshot.ref``. A value is a double-quoted string or a run of printable
characters up to a comma or a space; after ``~=`` it may also be quoted with ``/`` or ``|``.
Quoted strings take Go's escapes (``\\n``, ``\\"``, ``\\x41``, ``\\u00e9``, ``\\101``...).

This is the grammar of containerd's ``filters`` package, which is what the metadata layer and
GC send (``labels."containerd.io/snapshot.ref"==sha256:...,parent=="k8s.io/3/..."``). It is a
little more lenient about spaces between tokens; any string containerd accepts means the same
here. An empty string matches everything, as in containerd.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lazyimage.snapshotter._errors import InvalidSnapshotError

__all__ = ["FieldLookup", "Filter", "Selector", "parse_filters"]

# fieldpath -> (value, present). Absent fields compare as "".
FieldLookup = Callable[[Sequence[str]], tuple[str, bool]]
Operator = Literal["?", "==", "!=", "~="]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_OPERATOR_CHARS = "=!~"
_OPERATORS: dict[str, Operator] = {"==": "==", "!=": "!=", "~=": "~="}
_QUOTES = '"/|'
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: Operator
    value: str = ""
    # Compiled once; None for ~= with an invalid expression, which then matches nothing
    # (containerd logs and does the same).
    pattern: re.Pattern[str] | None = None

    def matches(self, lookup: FieldLookup) -> bool:
        value, present = lookup(self.fieldpath)
        if self.operator == "?":
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        return self.pattern is not None and self.pattern.search(value) is not None


@dataclass(frozen=True)
class Filter:
    """Alternatives (OR) of selector conjunctions (AND); no alternatives match everything."""

    alternatives: tuple[tuple[Selector, ...], ...] = ()

    def matches(self, lookup: FieldLookup) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.matches(lookup) for s in conj) for conj in self.alternatives)


def parse_filters(expressions: Sequence[str]) -> Filter:
    """Parse List's filter strings; raises InvalidSnapshotError naming the bad input."""
    alternatives = []
    for expression in expressions:
        if expression == "":
            return Filter()  # one always-true alternative makes the whole OR true
        alternatives.append(_Parser(expression).selectors())
    return Filter(tuple(alternatives))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> InvalidSnapshotError:
        where = self.pos if at is None else at
        return InvalidSnapshotError(
            f"filters: parse error: [{self.text[:where]} >|{self.text[where : where + 1]}|< "
            f"{self.text[where + 1 :]}]: {message}"
        )

    def peek(self) -> str:
        """The next character after spaces, or "" at the end."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        if self.pos >= len(self.text):
            return ""
        if self.text[self.pos] == "\0":
            raise self.error("unexpected null")
        return self.text[self.pos]

    def selectors(self) -> tuple[Selector, ...]:
        found = [self.selector()]
        while (ch := self.peek()) != "":
            if ch != ",":
                raise self.error(f"unexpected input: {ch}")
            self.pos += 1
            found.append(self.selector())
        return tuple(found)

    def selector(self) -> Selector:
        path = self.fieldpath()
        if self.peek() in ("", ","):
            return Selector(path, "?")
        operator = self.operator()
        if operator == "~=":
            value = self.value(quotes=_QUOTES)
            try:
                pattern: re.Pattern[str] | None = re.compile(value)
            except re.error:
                pattern = None
            return Selector(path, operator, value, pattern)
        return Selector(path, operator, self.value(quotes='"'))

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.quoted()
        match = _FIELD.match(self.text, self.pos)
        if match is None:
            raise self.error("expected field or quoted")
        self.pos = match.end()
        return match.group()

    def operator(self) -> Operator:
        start = self.pos
        if self.peek() == "" or self.text[self.pos] not in _OPERATOR_CHARS:
            raise self.error('expected an operator ("=="|"!="|"~=")')
        while self.pos < len(self.text) and self.text[self.pos] in _OPERATOR_CHARS:
            self.pos += 1
        operator = _OPERATORS.get(self.text[start : self.pos])
        if operator is not None:
            return operator
        raise self.error(f"unsupported operator {self.text[start : self.pos]!r}", start)

    def value(self, quotes: str) -> str:
        ch = self.peek()
        if ch in _QUOTES and ch != "":
            if ch not in quotes:
                raise self.error("invalid quote encountered")
            return self.quoted()
        if ch in ("", ",", ".") or ch in _OPERATOR_CHARS:
            raise self.error("expected value or quoted")
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "," or c.isspace() or not c.isprintable():
                break
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted string starting at pos, with Go's escapes; \\x and octal escapes are bytes."""
        start = self.pos
        quote = self.text[self.pos]
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.error("quoted literal not terminated", start)
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                # Values may carry bytes that are not UTF-8 (\xff); keep them round-trippable.
                return out.decode("utf-8", "surrogateescape")
            if ch != "\\":
                out += ch.encode("utf-8", "surrogateescape")
                continue
            out += self.escape(quote, start)

    def escape(self, quote: str, start: int) -> bytes:
        if self.pos >= len(self.text):
            raise self.error("quoted literal not terminated", start)
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch].encode()
        if ch == quote:
            return ch.encode()
        if ch in "01234567":
            digits = ch + self.digits(2, "01234567", start)
            code = int(digits, 8)
            if code > 255:
                raise self.error("illegal numeric escape sequence", start)
            return bytes([code])
        width = {"x": 2, "u": 4, "U": 8}.get(ch)
        if width is None:
            raise self.error("illegal escape sequence", start)
        code = int(self.digits(width, "0123456789abcdefABCDEF", start), 16)
        if ch == "x":
            return bytes([code])
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.error("illegal numeric escape sequence", start)
        return chr(code).encode("utf-8")

    def digits(self, count: int, allowed: str, start: int) -> str:
        text = self.text[self.pos : self.pos + count]
        if len(text) < count or any(c not in allowed for c in text):
            raise self.error("illegal numeric escape sequence", start)
        self.pos += count
        return text
