"""Learned startup profiles: from the agents' LazyImageNode reports to each LazyImage.

An agent reports, per image, the files its containers read in their first seconds. The newest
profile of an image, from whichever node, becomes its LazyImage's ``status.profile``, which
agents read when they are next ordered to prewarm the image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lazyimage_operator.naming import lazyimage_name

__all__ = ["newer_profiles"]


def newer_profiles(
    node: str, status: Mapping[str, Any], known: Callable[[str], str]
) -> dict[str, dict[str, Any]]:
    """The profiles in one node's status that are newer than what each LazyImage has
    (``known(name)``: its profile's ``recorded``, "" if none), keyed by LazyImage name.
    Only the LazyImages this node reports on are looked up."""
    found: dict[str, dict[str, Any]] = {}
    for raw in status.get("profiles") or []:
        if not isinstance(raw, Mapping):
            continue
        image, recorded, layers = raw.get("image"), raw.get("recorded"), raw.get("layers")
        if not isinstance(image, str) or not isinstance(recorded, str) or not layers:
            continue
        name = lazyimage_name(image)
        newest = found.get(name, {}).get("recorded") or known(name)
        if recorded <= newest:  # RFC 3339 UTC timestamps of one format sort as text
            continue
        profile = {"node": node, "recorded": recorded, "layers": layers}
        for key in ("windowSeconds", "files"):
            if key in raw:
                profile[key] = raw[key]
        found[name] = profile
    return found
