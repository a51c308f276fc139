"""Just enough YAML to read kubeconfig files, with no third-party parser.

kubectl, kind, kubeadm and the cloud CLIs write kubeconfigs in block style: mappings,
sequences (also the compact ``- key: value`` form at the parent key's indentation), plain and
quoted scalars, comments, ``{}`` / ``[]`` and, rarely, ``|`` literal blocks. A document that
is JSON is read as JSON. Anything else (anchors, aliases, tags, folded or multi-line plain
scalars, flow collections that are not JSON) raises YamlError with its line number rather
than being read wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["YamlError", "load_yaml"]

_INT_RE = re.compile(r"[-+]?[0-9]+")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
# Indicators that start YAML features this reader does not implement.
_UNSUPPORTED_START = frozenset("&*!%@`>")


class YamlError(ValueError):
    """The text is not YAML this reader understands; names the line."""


def load_yaml(text: str) -> Any:
    """The value of a one-document YAML (or JSON) text; None for an empty document."""
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise YamlError(f"invalid JSON: {exc}") from exc
    parser = _Parser(text.splitlines())
    value = parser.block(0)
    if parser.peek() is not None:
        raise parser.error("unexpected content after the document")
    return value


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _quoted_end(text: str) -> int:
    """The index just after the quoted string that starts ``text``."""
    quote = text[0]
    i = 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    raise ValueError("unterminated quoted string")


def _unquote(token: str) -> str:
    if token[0] == "'":
        return token[1:-1].replace("''", "'")
    # YAML double-quoted escapes are a superset of JSON's; the common ones are shared.
    value = json.loads(token)
    if not isinstance(value, str):
        raise ValueError("invalid double-quoted string")
    return value


def _strip_comment(text: str) -> str:
    """``text`` without a trailing `` # comment`` (a '#' after a space starts one)."""
    match = re.search(r"(^|\s)#", text)
    return (text[: match.start()] if match else text).rstrip()


def _scalar(text: str) -> Any:
    """An inline value: quoted, plain, or a JSON flow collection."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = _quoted_end(text)
        if _strip_comment(text[end:]):
            raise ValueError("text after a quoted string")
        return _unquote(text[:end])
    if text[:1] in ("[", "{"):
        try:
            return json.loads(_strip_comment(text))
        except ValueError:
            raise ValueError("flow collections must be JSON") from None
    if text[:1] in _UNSUPPORTED_START or text[:1] == "|":
        raise ValueError(f"unsupported YAML feature {text[:1]!r}")
    plain = _strip_comment(text)
    if plain in _NULLS:
        return None
    if plain in _TRUES:
        return True
    if plain in _FALSES:
        return False
    if _INT_RE.fullmatch(plain):
        return int(plain)
    return plain


def _split_key(content: str) -> tuple[str, str] | None:
    """``(key, rest)`` if ``content`` is a ``key: value`` line, else None."""
    if content[:1] in ("'", '"'):
        try:
            end = _quoted_end(content)
            key = _unquote(content[:end])
        except ValueError:
            return None
        rest = content[end:].lstrip()
        if rest == ":" or rest.startswith(": "):
            return key, rest[1:]
        return None
    if content[:1] in ("[", "{", "#"):
        return None
    match = re.search(r":(\s|$)", _strip_comment(content))
    if match is None:
        return None
    return content[: match.start()].rstrip(), content[match.start() + 1 :]


class _Parser:
    """Recursive descent over lines. ``block(n)`` reads the node whose first line is the next
    content line, if that line is indented at least ``n``."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.i = 0

    def error(self, message: str) -> YamlError:
        return YamlError(f"line {self.i + 1}: {message}")

    def peek(self) -> tuple[int, str] | None:
        """(indent, content) of the next line that is not blank or a comment."""
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            content = raw.lstrip(" ")
            stripped = content.rstrip()
            if stripped and content.startswith("\t"):
                raise self.error("tabs are not allowed for indentation")
            if stripped == "..." and raw.startswith("..."):
                self.i = len(self.lines)
                return None
            at_margin = len(raw) == len(content)
            if not stripped or stripped.startswith("#") or (stripped == "---" and at_margin):
                self.i += 1
                continue
            return len(raw) - len(content), stripped
        return None

    def block(self, min_indent: int) -> Any:
        line = self.peek()
        if line is None or line[0] < min_indent:
            return None
        indent, content = line
        if _is_item(content):
            return self.sequence(indent)
        if _split_key(content) is not None:
            return self.mapping(indent)
        value = self.inline(content)
        self.no_continuation(min_indent - 1)
        return value

    def inline(self, text: str) -> Any:
        """The inline value on the current line; moves past the line."""
        try:
            value = _scalar(text)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        self.i += 1
        return value

    def no_continuation(self, indent: int) -> None:
        """Refuse a line indented deeper than ``indent`` after an inline scalar."""
        following = self.peek()
        if following is not None and following[0] > indent:
            raise self.error("multi-line plain scalars are not supported")

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while (line := self.peek()) is not None and line[0] >= indent:
            if line[0] > indent:
                raise self.error("unexpected indentation")
            split = _split_key(line[1])
            if split is None:
                if _is_item(line[1]):
                    raise self.error("a sequence item where a mapping key was expected")
                raise self.error("expected 'key: value'")
            key, rest = split
            if key in result:
                raise self.error(f"duplicate key {key!r}")
            result[key] = self.value(indent, rest.strip())
        return result

    def value(self, indent: int, rest: str) -> Any:
        """The value after ``key:`` on the current line, which is indented ``indent``."""
        if rest.startswith("|"):
            self.i += 1
            return self.literal(indent, _strip_comment(rest))
        if _strip_comment(rest):
            value = self.inline(rest)
            self.no_continuation(indent)
            return value
        self.i += 1
        following = self.peek()
        # A sequence may sit at its key's own indentation (kubectl writes it so).
        if following is not None and following[0] == indent and _is_item(following[1]):
            return self.sequence(indent)
        return self.block(indent + 1)

    def sequence(self, indent: int) -> list[Any]:
        result: list[Any] = []
        while (line := self.peek()) is not None and line[0] == indent and _is_item(line[1]):
            # Blank out the dash: the item's content then starts a block at its own column,
            # which reads "- key: value" continued by "  key2: value" as one mapping.
            raw = self.lines[self.i]
            self.lines[self.i] = raw[:indent] + " " + raw[indent + 1 :]
            result.append(self.block(indent + 1))
        if line is not None and line[0] > indent:
            raise self.error("unexpected indentation")
        return result

    def literal(self, indent: int, header: str) -> str:
        """A ``|`` block scalar (``|-`` strips the final newline, ``|+`` keeps them all)."""
        chomp = header[1:].strip()
        if chomp not in ("", "-", "+"):
            raise self.error(f"unsupported block scalar header {header!r}")
        lines: list[str] = []
        content_indent: int | None = None
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            if raw.strip():
                current = len(raw) - len(raw.lstrip(" "))
                if current <= indent:
                    break
                if content_indent is None:
                    content_indent = current
                elif current < content_indent:
                    raise self.error("block scalar line indented less than its first line")
                lines.append(raw[content_indent:])
            else:
                lines.append("")
            self.i += 1
        text = "\n".join(lines)
        if chomp == "+":
            return text + "\n" if lines else ""
        text = text.rstrip("\n")
        return text if chomp == "-" or not text else text + "\n"
