"""The contract between the operator and the node agents: what travels on a LazyImageNode.

The operator writes ``spec.orders`` (``Order``); the node's agent writes ``status.images``
(``ImageReport``, one per ordered image). Both sides build and read these objects only through
the types here, so a field is named, typed and written in one place. Reading is lenient: a
field of the wrong type reads as absent, since the other side may be another version.
Times are RFC 3339 in UTC with microseconds (``format_time``), so that two orders within a
second differ and timestamps of this one format sort as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

__all__ = [
    "ImageReport",
    "Order",
    "SecretRef",
    "format_time",
    "parse_time",
    "utc_now",
]

# Longest texts kept on the object: a reason or an error message must not bloat it.
_MAX_REASON = 512
_MAX_MESSAGE = 1024


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def utc_now() -> str:
    return format_time(datetime.now(UTC))


class SecretRef(NamedTuple):
    """A dockerconfigjson secret, by name, that the agent may read to pull an order's image."""

    namespace: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SecretRef:
        return cls(namespace=str(raw.get("namespace", "")), name=str(raw.get("name", "")))


@dataclass(frozen=True)
class Order:
    """One image a node is ordered to prefetch. A new ``issued_at`` orders it again."""

    image: str
    lazy_image: str  # the LazyImage the node's report folds into; "" for none
    issued_at: str  # format_time
    reason: str = ""
    pull_secrets: tuple[SecretRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "image": self.image,
            "lazyImage": self.lazy_image,
            "issuedAt": self.issued_at,
            "reason": self.reason[:_MAX_REASON],
        }
        if self.pull_secrets:
            raw["pullSecrets"] = [ref.to_dict() for ref in sorted(set(self.pull_secrets))]
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Order | None:
        """The order, or None if it names no image or no time."""
        image, issued = raw.get("image"), raw.get("issuedAt")
        if not isinstance(image, str) or not image or not isinstance(issued, str):
            return None
        secrets = tuple(
            SecretRef.from_dict(ref)
            for ref in raw.get("pullSecrets") or []
            if isinstance(ref, Mapping)
        )
        return cls(
            image, str(raw.get("lazyImage") or ""), issued, str(raw.get("reason") or ""), secrets
        )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class ImageReport:
    """What a node's agent did with one order: ``state`` is Pending, Fetching, Ready or Failed.
    The result fields are set once the order is Ready."""

    image: str
    issued_at: str  # the order's, so a report on an older order is told apart
    state: str
    updated: str = ""
    lazy_image: str = ""
    message: str = ""
    digest: str | None = None
    layers: int | None = None
    zone_bytes: int | None = None
    fetched_bytes: int | None = None
    seconds: float | None = None
    profile_files: int | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "image": self.image,
            "issuedAt": self.issued_at,
            "state": self.state,
            "updated": self.updated,
        }
        if self.lazy_image:
            raw["lazyImage"] = self.lazy_image
        if self.message:
            raw["message"] = self.message[:_MAX_MESSAGE]
        optional = (
            ("digest", self.digest),
            ("layers", self.layers),
            ("zoneBytes", self.zone_bytes),
            ("fetchedBytes", self.fetched_bytes),
            ("seconds", None if self.seconds is None else round(self.seconds, 3)),
            ("profileFiles", self.profile_files),
            ("cacheHits", self.cache_hits),
            ("cacheMisses", self.cache_misses),
        )
        raw |= {key: value for key, value in optional if value is not None}
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImageReport:
        seconds, digest = raw.get("seconds"), raw.get("digest")
        return cls(
            image=str(raw.get("image", "")),
            issued_at=str(raw.get("issuedAt", "")),
            state=str(raw.get("state", "Pending")),
            updated=str(raw.get("updated") or ""),
            lazy_image=str(raw.get("lazyImage") or ""),
            message=str(raw.get("message") or ""),
            digest=digest if isinstance(digest, str) else None,
            layers=_count(raw.get("layers")),
            zone_bytes=_count(raw.get("zoneBytes")),
            fetched_bytes=_count(raw.get("fetchedBytes")),
            seconds=float(seconds)
            if isinstance(seconds, int | float) and not isinstance(seconds, bool)
            else None,
            profile_files=_count(raw.get("profileFiles")),
            cache_hits=_count(raw.get("cacheHits")),
            cache_misses=_count(raw.get("cacheMisses")),
        )
