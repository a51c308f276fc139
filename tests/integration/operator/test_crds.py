"""The CRDs as the API server enforces them: names, printer columns, and bad objects refused
with a clear message (nothing stored)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.kube import KubeCluster
from tests.integration.operator.helpers import create, get_json

pytestmark = [pytest.mark.integration]


def _lazyimage(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImage",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_lazyimage_names_and_columns(lazyimage_crds: KubeCluster) -> None:
    cluster = lazyimage_crds
    create(cluster, _lazyimage("crd-columns", image="reg.local:5000/app:1"))
    try:
        table = cluster.kubectl("get", "li", "crd-columns").stdout.splitlines()
        # The singular, plural and short names each name exactly the one kind.
        for spelling in ("lazyimage", "lazyimages", "li"):
            assert cluster.kubectl("get", spelling, "crd-columns", "-o", "name").stdout.strip() == (
                "lazyimage.lazyimage.io/crd-columns"
            )
        assert table[0].split() == [
            "NAME",
            "IMAGE",
            "READY",
            "FETCHED",
            "HITS",
            "MISSES",
            "PROFILE",
            "AGE",
        ]
        assert table[1].split()[:2] == ["crd-columns", "reg.local:5000/app:1"]
        crd = get_json(cluster, "crd", "lazyimagenodes.lazyimage.io")
        assert crd["spec"]["scope"] == "Cluster"
        assert crd["spec"]["names"]["shortNames"] == ["lin"]
        assert "status" in crd["spec"]["versions"][0]["subresources"]
    finally:
        cluster.kubectl("delete", "lazyimage", "crd-columns", "--wait=false", check=False)


def test_unknown_fields_are_refused_by_name(lazyimage_crds: KubeCluster) -> None:
    body = _lazyimage("crd-unknown", image="reg.local/app:1", prewarmEverything=True)
    done = lazyimage_crds.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode != 0
    assert 'unknown field "spec.prewarmEverything"' in done.stderr
    assert get_json(lazyimage_crds, "lazyimage", "crd-unknown") is None


def test_a_lazyimage_needs_an_image(lazyimage_crds: KubeCluster) -> None:
    done = lazyimage_crds.kubectl(
        "create", "-f", "-", input=json.dumps(_lazyimage("crd-noimage")), check=False
    )
    assert done.returncode != 0
    assert "spec.image: Required value" in done.stderr


def test_node_reports_are_validated(lazyimage_crds: KubeCluster) -> None:
    cluster = lazyimage_crds
    node = {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImageNode",
        "metadata": {"name": "crd-node"},
        "spec": {"orders": [{"image": "reg.local/app:1", "issuedAt": "2026-11-28T12:00:00Z"}]},
    }
    create(cluster, node)
    try:
        bad = {"status": {"images": [{"image": "reg.local/app:1", "state": "Done"}]}}
        done = cluster.kubectl(
            "patch", "lazyimagenode", "crd-node", "--subresource=status", "--type=merge",
            "-p", json.dumps(bad), check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert "Unsupported value" in done.stderr and '"Done"' in done.stderr
        two = [
            {"image": "reg.local/app:1", "issuedAt": "2026-11-28T12:00:00Z"},
            {"image": "reg.local/app:1", "issuedAt": "2026-11-28T12:01:00Z"},
        ]
        done = cluster.kubectl(
            "patch", "lazyimagenode", "crd-node", "--type=merge",
            "-p", json.dumps({"spec": {"orders": two}}), check=False,
        )  # fmt: skip
        assert done.returncode != 0 and "Duplicate value" in done.stderr
    finally:
        cluster.kubectl("delete", "lazyimagenode", "crd-node", "--wait=false", check=False)
