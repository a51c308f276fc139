"""Exit codes of the ``lazyimage`` command (documented in README.md)."""

from __future__ import annotations

from lazyimage import errors

__all__ = [
    "AUTH",
    "BAD_DATA",
    "FAILED",
    "INTERNAL",
    "NOT_FOUND",
    "OK",
    "UNAVAILABLE",
    "USAGE",
    "exit_code_for",
]

OK = 0
INTERNAL = 1  # a bug: please report it
USAGE = 2  # bad command line or reference
NOT_FOUND = 3  # image, tag, manifest or blob not found
AUTH = 4  # the registry refused our credentials
UNAVAILABLE = 5  # registry errors or unreachable past the retry bound
BAD_DATA = 6  # corrupt or invalid image data: digests, gzip, tar, TOC
FAILED = 7  # any other failure


def exit_code_for(exc: BaseException) -> int:
    """The most specific code for an error, looking through ConversionError to its cause."""
    seen: BaseException | None = exc
    while isinstance(seen, errors.ConversionError) and seen.__cause__ is not None:
        seen = seen.__cause__
    table: list[tuple[type[BaseException], int]] = [
        (errors.InvalidReferenceError, USAGE),
        (errors.NotFoundError, NOT_FOUND),
        (errors.AuthError, AUTH),
        (errors.RegistryError, UNAVAILABLE),
        (errors.FormatError, BAD_DATA),
        (errors.VerificationError, BAD_DATA),
        (errors.LazyImageError, FAILED),
    ]
    for kind, code in table:
        if isinstance(seen, kind):
            return code
    return INTERNAL
