"""How a registry operation names its failures, and the two failures that stay inside it.

``Op`` says what was asked (registry, repository, what), so that every error a caller sees
names it. ``Retryable`` and ``Fatal`` are raised below the operation (by a response handler
or the request sender) and turned into errors, or into another attempt, by the retry loop
(lazyimage.registry._operations).
"""

from __future__ import annotations

from dataclasses import dataclass

from lazyimage.errors import InvalidReferenceError, RegistryError, VerificationError
from lazyimage.oci import is_digest
from lazyimage.registry._reference import Reference

__all__ = ["Fatal", "Op", "Retryable", "blob_op", "describe"]


@dataclass(frozen=True)
class Op:
    """What an operation asks for, to name it in errors."""

    registry: str
    repository: str
    what: str

    def error(
        self, cls: type[RegistryError], message: str, status: int | None = None
    ) -> RegistryError:
        return cls(
            message,
            registry=self.registry,
            repository=self.repository,
            what=self.what,
            status=status,
        )

    def mismatch(self, message: str) -> VerificationError:
        return VerificationError(f"{self.what} from {self.registry}/{self.repository}: {message}")


class Fatal(Exception):
    """A failure below the operation (a redirect loop); the operation names it."""


class Retryable(Exception):
    """A failure worth another attempt: 5xx, 429, a short body."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


def blob_op(ref: Reference, digest: str, what: str) -> Op:
    # The digest becomes part of a URL path: refuse anything but a well-formed digest.
    if not is_digest(digest):
        raise InvalidReferenceError(f"invalid blob digest {digest!r}")
    return Op(ref.registry, ref.repository, what)


def describe(exc: BaseException) -> str:
    """An exception as a cause in a message: its type, and its text if it has one."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
