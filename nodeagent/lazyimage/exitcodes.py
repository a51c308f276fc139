"""Exit codes of the ``lazyimage``, ``lazyimage-agent`` and ``lazyimage-operator`` commands
(documented in README.md)."""

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
    "error_message",
    "exit_code_for",
]

OK = 0
INTERNAL = 1  # a bug: please report it
# bad command line, LAZYIMAGE_* variable, reference or registry configuration (hosts.toml); a
# missing --insecure-registry; a registry certificate not trusted (or ours refused)
USAGE = 2
NOT_FOUND = 3  # image, tag, manifest or blob not found
AUTH = 4  # the registry refused our credentials
UNAVAILABLE = 5  # registry errors or unreachable past the retry bound
BAD_DATA = 6  # corrupt or invalid image data: digests, gzip, tar, TOC
FAILED = 7  # any other failure: a full disk, a denied path, a port in use


def _innermost(exc: BaseException) -> BaseException:
    """The error itself, seen through ConversionError (to its cause) and one-error groups."""
    seen = exc
    while True:
        if isinstance(seen, errors.ConversionError) and seen.__cause__ is not None:
            seen = seen.__cause__
        elif isinstance(seen, BaseExceptionGroup) and len(seen.exceptions) == 1:
            seen = seen.exceptions[0]
        else:
            return seen


def exit_code_for(exc: BaseException) -> int:
    """The most specific code for an error."""
    seen = _innermost(exc)
    table: list[tuple[type[BaseException], int]] = [
        (errors.InvalidReferenceError, USAGE),
        (errors.PlainHTTPError, USAGE),
        (errors.TLSError, USAGE),
        (errors.ConfigError, USAGE),
        (errors.NotFoundError, NOT_FOUND),
        (errors.AuthError, AUTH),
        (errors.RegistryError, UNAVAILABLE),
        (errors.FormatError, BAD_DATA),
        (errors.VerificationError, BAD_DATA),
        (errors.LazyImageError, FAILED),
        # The system refused: no space, no permission, a port in use. Not a bug.
        (OSError, FAILED),
    ]
    for kind, code in table:
        if isinstance(seen, kind):
            return code
    return INTERNAL


def error_message(exc: BaseException) -> str:
    """One line for the user: an OSError as ``PATH: reason``, anything else as its text."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return error_message(exc.exceptions[0])
    if isinstance(exc, OSError) and exc.strerror:
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        return f"{' -> '.join(paths)}: {exc.strerror}" if paths else exc.strerror
    return str(exc) or type(exc).__name__
