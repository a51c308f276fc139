"""A small async Kubernetes API client: config loading, a few verbs, and watches.

The agent uses it to follow its node's ``LazyImageNode`` and to write that object's status;
nothing in it is specific to that resource. ``KubeConfig`` is loaded by the official
``kubernetes`` package, as kubectl loads it: kubeconfig files (``$KUBECONFIG`` merged), exec
credential plugins, auth providers, or the pod's service account. One ``KubeClient`` (an async
context manager) holds one HTTP/1.1 connection pool, and keeps the token current: refreshed
when it expires, renewed after a 401. Every failure is a ``KubeError`` naming the verb, the
path and the apiserver's Status message; 404, 409 and 410 have their own subclasses. Requests
use only httpx and anyio, so the client runs under trio and asyncio alike.
"""

from lazyimage.kube._client import KubeClient
from lazyimage.kube._config import KubeConfig
from lazyimage.kube._errors import (
    ConflictError,
    GoneError,
    KubeConfigError,
    KubeError,
    NotFoundError,
)
from lazyimage.kube._resource import ResourcePath
from lazyimage.kube._watch import WatchEvent

__all__ = [
    "ConflictError",
    "GoneError",
    "KubeClient",
    "KubeConfig",
    "KubeConfigError",
    "KubeError",
    "NotFoundError",
    "ResourcePath",
    "WatchEvent",
]
