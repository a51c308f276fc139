"""Matching prioritized-file patterns (paths and globs) against layer entry names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from lazyimage.estargz._toc import clean_name

__all__ = ["PriorityMatcher", "read_priority_list"]


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path component, ``**`` crosses them, ``[...]`` sets."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            close = pattern.find("]", i + 2)
            if close < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : close]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class PriorityMatcher:
    """Orders entry names by the first pattern that matches them."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._exact: dict[str, int] = {}
        self._globs: list[tuple[int, re.Pattern[str]]] = []
        for rank, raw in enumerate(patterns):
            pattern = raw.strip().lstrip("/")
            if not pattern:
                continue
            if _is_glob(pattern):
                self._globs.append((rank, _glob_to_regex(pattern.removeprefix("./"))))
            else:
                self._exact.setdefault(clean_name(pattern), rank)

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def rank(self, name: str) -> int | None:
        """The index of the first pattern matching ``name`` (a cleaned path), or None."""
        best = self._exact.get(name)
        for rank, regex in self._globs:
            if best is not None and rank >= best:
                break
            if regex.match(name):
                best = rank
                break
        return best


def read_priority_list(lines: Iterable[str]) -> list[str]:
    """Patterns from a list file: one per line, blank lines and ``#`` comments ignored."""
    out: list[str] = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out
