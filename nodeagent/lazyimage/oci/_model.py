"""OCI descriptors, manifests, indexes and image configs as typed views over JSON.

Each view keeps the raw JSON object it came from, so fields this code does not model
survive a round trip (annotations, history, vendor extensions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lazyimage.errors import FormatError
from lazyimage.oci import _mediatypes as mt

__all__ = [
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "dumps_canonical",
    "select_platform",
]


def dumps_canonical(obj: Any) -> bytes:
    """Serialise JSON the way registries and containerd tools do: compact, key order kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"{what} is not a JSON object")
    return obj


def _document(
    media_type: str, body: dict[str, Any], annotations: dict[str, str], raw: dict[str, Any]
) -> dict[str, Any]:
    """A manifest or index: the modelled fields, then any others the source document had."""
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, **body}
    if annotations:
        obj["annotations"] = dict(annotations)
    for key, value in raw.items():
        if key != "annotations":
            obj.setdefault(key, value)
    return obj


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]``, e.g. ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}; expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Platform:
        return cls(
            str(obj.get("os", "")), str(obj.get("architecture", "")), str(obj.get("variant", ""))
        )

    def to_json(self) -> dict[str, str]:
        obj = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            obj["variant"] = self.variant
        return obj

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise FormatError("descriptor is not a JSON object")
        try:
            media_type = str(obj["mediaType"])
            digest = str(obj["digest"])
            size = int(obj["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"descriptor lacks mediaType, digest or size: {exc}") from exc
        annotations = obj.get("annotations") or {}
        platform = obj.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations={str(k): str(v) for k, v in annotations.items()},
            platform=Platform.from_json(platform) if isinstance(platform, dict) else None,
            raw=dict(obj),
        )

    def to_json(self) -> dict[str, Any]:
        obj = dict(self.raw)
        obj["mediaType"] = self.media_type
        obj["digest"] = self.digest
        obj["size"] = self.size
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        else:
            obj.pop("annotations", None)
        if self.platform is not None:
            obj["platform"] = self.platform.to_json()
        # Key order as in the OCI spec examples.
        ordered: dict[str, Any] = {k: obj[k] for k in ("mediaType", "digest", "size") if k in obj}
        ordered.update({k: v for k, v in obj.items() if k not in ordered})
        return ordered


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Manifest:
        obj = _load_object(data, "manifest")
        kind = str(obj.get("mediaType") or media_type or mt.OCI_MANIFEST)
        if kind not in mt.MANIFEST_TYPES:
            raise FormatError(f"unsupported manifest media type {kind!r}")
        try:
            config = Descriptor.from_json(obj["config"])
            layers = [Descriptor.from_json(layer) for layer in obj["layers"]]
        except (KeyError, TypeError) as exc:
            raise FormatError(f"manifest lacks config or layers: {exc}") from exc
        return cls(kind, config, layers, dict(obj.get("annotations") or {}), obj)

    def to_json(self) -> dict[str, Any]:
        body = {
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return _document(self.media_type, body, self.annotations, self.raw)

    def to_bytes(self) -> bytes:
        return dumps_canonical(self.to_json())


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Index:
        obj = _load_object(data, "index")
        kind = str(obj.get("mediaType") or media_type or mt.OCI_INDEX)
        if kind not in mt.INDEX_TYPES:
            raise FormatError(f"unsupported index media type {kind!r}")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise FormatError("index lacks a manifests list")
        return cls(
            kind,
            [Descriptor.from_json(m) for m in manifests],
            dict(obj.get("annotations") or {}),
            obj,
        )

    def to_json(self) -> dict[str, Any]:
        body = {"manifests": [m.to_json() for m in self.manifests]}
        return _document(self.media_type, body, self.annotations, self.raw)

    def to_bytes(self) -> bytes:
        return dumps_canonical(self.to_json())


@dataclass(frozen=True)
class ImageConfig:
    """The image config blob. Only the rootfs DiffIDs are modelled; the rest is kept raw."""

    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        return cls(_load_object(data, "image config"))

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.raw.get("rootfs") or {}
        return [str(d) for d in rootfs.get("diff_ids") or []]

    @property
    def platform(self) -> Platform:
        return Platform(
            str(self.raw.get("os", "")),
            str(self.raw.get("architecture", "")),
            str(self.raw.get("variant", "")),
        )

    def with_diff_ids(self, diff_ids: list[str]) -> ImageConfig:
        raw = json.loads(json.dumps(self.raw))
        raw.setdefault("rootfs", {"type": "layers"})
        raw["rootfs"]["diff_ids"] = list(diff_ids)
        return ImageConfig(raw)

    def to_bytes(self) -> bytes:
        return dumps_canonical(self.raw)


def _normal_variant(architecture: str, variant: str) -> str:
    # containerd's defaults: arm64 means v8, arm means v7.
    if architecture == "arm64" and variant in ("", "v8", "8"):
        return "v8"
    if architecture == "arm" and variant == "":
        return "v7"
    return variant


def select_platform(index: Index, platform: Platform) -> Descriptor | None:
    """The first image manifest in ``index`` for ``platform``. An empty requested variant
    accepts any variant; ``arm64`` and ``arm64/v8`` are the same platform."""
    for descriptor in index.manifests:
        found = descriptor.platform
        if found is None or descriptor.media_type not in mt.MANIFEST_TYPES:
            continue
        if (found.os, found.architecture) != (platform.os, platform.architecture):
            continue
        if platform.variant and _normal_variant(
            found.architecture, found.variant
        ) != _normal_variant(platform.architecture, platform.variant):
            continue
        return descriptor
    return None
