"""Command-line values and their LAZYIMAGE_* environment defaults, checked the same way.

Each converter raises ``argparse.ArgumentTypeError`` with the reason, which argparse shows
for a bad flag; ``EnvDefaults`` keeps the same reason for a bad variable, under the
variable's name, so the command can refuse it (exit code 2) before doing anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

__all__ = [
    "EnvDefaults",
    "boolean",
    "choice",
    "directory",
    "host_port",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError("not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def host_port(text: str) -> str:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6); port 0 picks a free one."""
    host, _, port = text.strip().rpartition(":")
    if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return text.strip()


def directory(text: str) -> Path | None:
    """An existing directory; an empty value for none."""
    if not text.strip():
        return None
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def choice(*options: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(options)}")
        return value

    return convert


class EnvDefaults:
    """Reads each flag's default from its variable; an empty variable counts as unset.

    A bad value does not stop the reading: it is kept in ``problems`` (naming the variable),
    and the flag gets its built-in default, so ``--help`` still works.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def __call__(self, name: str, convert: Callable[[str], T], default: T) -> T:
        text = self._env.get(name, "")
        if not text.strip():
            return default
        try:
            return convert(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            self.problems.append(f"{name}={text!r}: {exc}")
            return default

    def text(self, name: str, default: str = "") -> str:
        """A variable taken as it is (a path, a name); ``default`` when unset or empty."""
        return self._env.get(name, "").strip() or default
