"""Converting images to eStargz and inspecting them, in registries or OCI layouts."""

from lazyimage.convert._convert import (
    ConvertObserver,
    ConvertOptions,
    ConvertResult,
    LayerReport,
    ManifestReport,
    convert_image,
)
from lazyimage.convert._copy import copy_image
from lazyimage.convert._inspect import FileInfo, ImageInspection, LayerInspection, inspect_image
from lazyimage.convert._store import (
    ImageStore,
    LayoutLocation,
    LayoutStore,
    Location,
    RegistryStore,
    RootManifest,
    parse_location,
)

__all__ = [
    "ConvertObserver",
    "ConvertOptions",
    "ConvertResult",
    "FileInfo",
    "ImageInspection",
    "ImageStore",
    "LayerInspection",
    "LayerReport",
    "LayoutLocation",
    "LayoutStore",
    "Location",
    "ManifestReport",
    "RegistryStore",
    "RootManifest",
    "convert_image",
    "copy_image",
    "inspect_image",
    "parse_location",
]
