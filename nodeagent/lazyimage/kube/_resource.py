"""ResourcePath: where a kind of object lives in the API, and the URL paths under it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["ResourcePath"]


def _segment(value: str, what: str) -> str:
    # Each value becomes one path segment: refuse what would change the path's shape.
    if not value or value in (".", "..") or "/" in value:
        raise ValueError(f"invalid {what} {value!r}")
    return quote(value, safe="")


@dataclass(frozen=True)
class ResourcePath:
    """A resource collection: cluster-scoped when ``namespace`` is None. ``group`` is "" for
    the core API (``/api/v1``), else the collection is under ``/apis/GROUP/VERSION``."""

    group: str
    version: str
    plural: str
    namespace: str | None = None

    def collection(self) -> str:
        """``/apis/G/V[/namespaces/NS]/PLURAL``, or ``/api/V/...`` for the core group."""
        if self.group:
            base = f"/apis/{_segment(self.group, 'group')}/{_segment(self.version, 'version')}"
        else:
            base = f"/api/{_segment(self.version, 'version')}"
        if self.namespace is not None:
            base += f"/namespaces/{_segment(self.namespace, 'namespace')}"
        return f"{base}/{_segment(self.plural, 'resource')}"

    def item(self, name: str, subresource: str | None = None) -> str:
        """The path of the object ``name``, or of its ``subresource`` (``status``, ``scale``)."""
        path = f"{self.collection()}/{_segment(name, 'name')}"
        if subresource is not None:
            path += f"/{_segment(subresource, 'subresource')}"
        return path
