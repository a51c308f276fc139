"""Choosing a manifest from an index."""

from __future__ import annotations

import json
from typing import Any

from lazyimage.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Index, Platform, select_platform


def _entry(n: int, platform: dict[str, str], media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": f"sha256:{n:064x}",
        "size": 100,
        "platform": platform,
    }


INDEX = Index.parse(
    json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                _entry(1, {"os": "unknown", "architecture": "unknown"}),
                _entry(2, {"os": "linux", "architecture": "amd64"}),
                _entry(3, {"os": "linux", "architecture": "arm", "variant": "v6"}),
                _entry(4, {"os": "linux", "architecture": "arm"}),
                _entry(5, {"os": "linux", "architecture": "arm64"}),
                _entry(6, {"os": "windows", "architecture": "amd64"}, DOCKER_MANIFEST),
                _entry(7, {"os": "linux", "architecture": "s390x"}, OCI_INDEX),
            ],
        }
    ).encode()
)


def _pick(text: str) -> int | None:
    found = select_platform(INDEX, Platform.parse(text))
    return None if found is None else int(found.digest.split(":")[1], 16)


def test_exact_and_first_match() -> None:
    assert _pick("linux/amd64") == 2
    assert _pick("windows/amd64") == 6
    assert _pick("linux/arm") == 3  # no variant asked: the first arm entry


def test_default_variants() -> None:
    assert _pick("linux/arm64/v8") == 5  # arm64 without a variant means v8
    assert _pick("linux/arm/v7") == 4  # arm without a variant means v7
    assert _pick("linux/arm/v6") == 3
    assert _pick("linux/arm64/v9") is None


def test_nested_indexes_and_unknown_platforms_are_skipped() -> None:
    assert _pick("linux/s390x") is None
    assert _pick("unknown/unknown") == 1
