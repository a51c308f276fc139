"""The errors of the Kubernetes client, and how an apiserver answer becomes one.

    LazyImageError
    └── KubeError               a request failed; names the verb, the path and the Status
        ├── KubeConfigError       no usable configuration (kubeconfig, in-cluster, TLS, token)
        ├── NotFoundError         404
        ├── ConflictError         409: a resourceVersion precondition or a name clash
        └── GoneError             410: the resourceVersion to watch from is too old

Messages never carry request headers, so a bearer token cannot leak through them.
"""

from __future__ import annotations

import json
from typing import Any

from lazyimage.errors import LazyImageError

__all__ = [
    "ConflictError",
    "GoneError",
    "KubeConfigError",
    "KubeError",
    "NotFoundError",
    "response_error",
    "status_error",
    "transport_error",
]

_MAX_BODY_TEXT = 300


class KubeError(LazyImageError):
    """A Kubernetes API request failed. ``status`` is the HTTP status or the Status ``code``
    (None when no answer came); ``reason`` is the Status ``reason`` (``NotFound``,
    ``Conflict``, ``Expired``, ``Invalid``, ...)."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeConfigError(KubeError):
    """No usable client configuration: a kubeconfig, in-cluster files, TLS material or token."""


class NotFoundError(KubeError):
    """The apiserver answered 404."""


class ConflictError(KubeError):
    """The apiserver answered 409: a stale resourceVersion, or the name is taken."""


class GoneError(KubeError):
    """The apiserver answered 410: the resourceVersion is too old; list again."""


_BY_CODE: dict[int, type[KubeError]] = {404: NotFoundError, 409: ConflictError, 410: GoneError}


def status_error(verb: str, path: str, code: int, status: Any) -> KubeError:
    """The error for an apiserver ``Status`` object (a body, or a watch ERROR event's object).

    ``code`` is the HTTP status; the Status's own ``code`` wins when it has one, because a
    watch ERROR event arrives on a 200 stream.
    """
    reason: str | None = None
    message = ""
    if isinstance(status, dict):
        if isinstance(status.get("code"), int) and status["code"] > 0:
            code = status["code"]
        if isinstance(status.get("reason"), str) and status["reason"]:
            reason = status["reason"]
        if isinstance(status.get("message"), str):
            message = status["message"]
    detail = " ".join(part for part in (str(code), reason or "") if part)
    text = f"{verb} {path}: {detail}: {message}" if message else f"{verb} {path}: {detail}"
    return _BY_CODE.get(code, KubeError)(text, status=code, reason=reason)


def response_error(verb: str, path: str, code: int, body: bytes) -> KubeError:
    """The error for a non-2xx answer; its body is a Status when the apiserver wrote it."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return status_error(verb, path, code, status)
    # Not a Status (a proxy, a load balancer): show the start of the body instead.
    text = " ".join(body[:_MAX_BODY_TEXT].decode("utf-8", "replace").split())
    return status_error(verb, path, code, {"message": text})


def transport_error(verb: str, path: str, exc: BaseException) -> KubeError:
    """The error for a request that got no answer (connect, TLS, timeout, dropped stream)."""
    text = str(exc) or type(exc).__name__
    if text != type(exc).__name__:
        text = f"{type(exc).__name__}: {text}"
    return KubeError(f"{verb} {path}: {text}")
