"""Learned startup profiles: the files each image's containers read in their first seconds.

A mounted layer's recorder notes the first read of every file. Once a layer has been mounted
for the profile window, the files read within the window become that layer's part of its
image's profile. The agent reports profiles on its LazyImageNode; the operator keeps the
newest one in the image's LazyImage, and agents prefetch those files along with the priority
zone when they are next ordered to prewarm the image: an image converted without a priority
zone still gets one, learned, without being rebuilt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lazyimage.layer import ProfileEntry

__all__ = ["ProfileBook", "RecordedLayer", "profile_paths"]

# Bounds that keep the status object small (an etcd object is at most 1.5 MB).
MAX_PATHS_PER_LAYER = 1000
MAX_PROFILES = 8
MAX_PATH_LENGTH = 1024


class RecordedLayer(Protocol):
    """What the book needs of a mounted layer (agent.layers.MountedLayer has it)."""

    @property
    def image(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def mounted_for(self) -> float: ...
    def reads(self) -> list[ProfileEntry]: ...


@dataclass
class _Profile:
    image: str
    recorded: str
    layers: dict[str, list[str]] = field(default_factory=dict)

    def to_status(self, window: float) -> dict[str, Any]:
        return {
            "image": self.image,
            "recorded": self.recorded,
            "windowSeconds": window,
            "files": sum(len(paths) for paths in self.layers.values()),
            "layers": [{"digest": d, "paths": paths} for d, paths in self.layers.items()],
        }


class ProfileBook:
    def __init__(self, window: float) -> None:
        self.window = window
        self._profiles: OrderedDict[str, _Profile] = OrderedDict()
        self._done: set[tuple[str, str]] = set()  # (image, layer digest) already profiled

    def collect(self, layers: Iterable[RecordedLayer], now: str) -> bool:
        """Take the profile of every layer mounted for the window and not yet taken; True if
        a profile changed."""
        changed = False
        for layer in layers:
            key = (layer.image, layer.digest)
            if key in self._done or layer.mounted_for < self.window:
                continue
            self._done.add(key)
            paths = [
                entry.path
                for entry in layer.reads()
                if entry.seconds <= self.window and len(entry.path) <= MAX_PATH_LENGTH
            ][:MAX_PATHS_PER_LAYER]
            if not paths:
                continue
            profile = self._profiles.pop(layer.image, None) or _Profile(layer.image, now)
            profile.layers[layer.digest] = paths
            profile.recorded = now
            self._profiles[layer.image] = profile  # newest last
            while len(self._profiles) > MAX_PROFILES:
                self._profiles.popitem(last=False)
            changed = True
        return changed

    def to_status(self) -> list[dict[str, Any]]:
        return [profile.to_status(self.window) for profile in self._profiles.values()]


def profile_paths(profile: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """A LazyImage's ``status.profile`` as {layer digest: paths}, ignoring malformed parts."""
    found: dict[str, list[str]] = {}
    for layer in (profile or {}).get("layers") or []:
        if not isinstance(layer, Mapping) or not isinstance(layer.get("digest"), str):
            continue
        paths = [p for p in layer.get("paths") or [] if isinstance(p, str)]
        if paths:
            found[layer["digest"]] = paths[:MAX_PATHS_PER_LAYER]
    return found
