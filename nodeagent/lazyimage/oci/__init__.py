"""OCI image model: media types, digests, descriptors, manifests and layout directories."""

from lazyimage.oci._digest import check_digest, copy_verified, is_digest, sha256_digest
from lazyimage.oci._layout import REF_NAME_ANNOTATION, OCILayout
from lazyimage.oci._mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)
from lazyimage.oci._model import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    dumps_canonical,
    select_platform,
)

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "REF_NAME_ANNOTATION",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "OCILayout",
    "Platform",
    "check_digest",
    "copy_verified",
    "dumps_canonical",
    "is_digest",
    "select_platform",
    "sha256_digest",
]
