"""The operator puts no finalizer on LazyImages, so nothing waits on an operator that is gone
(``helm uninstall`` leaves the CRDs and their objects, which must stay deletable). Their
status is still folded, by the operator's own loop rather than a kopf timer (kopf finalizes
every object that has a timer). A finalizer that an older operator left is released."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.kube import KubeCluster
from tests.integration.operator.helpers import create, get_json, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FINALIZER = "lazyimage.io/operator"
OTHER = "example.com/keep-me"


def _get(cluster: KubeCluster, name: str) -> dict[str, Any]:
    obj = get_json(cluster, "lazyimage", name)
    assert obj is not None, f"no LazyImage {name}"
    return dict(obj)


def _finalizers(cluster: KubeCluster, name: str) -> list[str]:
    return list(_get(cluster, name)["metadata"].get("finalizers") or [])


def _lazyimage(name: str, *finalizers: str) -> dict[str, Any]:
    return {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImage",
        "metadata": {"name": name, "finalizers": list(finalizers)},
        "spec": {"image": f"registry.example:5000/{name}:1"},
    }


def test_lazyimages_carry_no_finalizer_and_are_still_folded(
    lazyimage_crds: KubeCluster, operator_factory: Any
) -> None:
    cluster = lazyimage_crds
    create(cluster, _lazyimage("fin-new"))
    create(cluster, _lazyimage("fin-old", FINALIZER, OTHER))  # as an older operator left it
    try:
        operator = operator_factory(cluster.kubeconfig)
        for name in ("fin-new", "fin-old"):
            folded = wait_for(
                f"the status of {name}",
                lambda name=name: (_get(cluster, name).get("status") or {}).get("summary"),
                60,
                operator.log,
            )
            assert folded == "0/0"
        wait_for(
            "the old finalizer released",
            lambda: _finalizers(cluster, "fin-old") == [OTHER],
            60,
            operator.log,
        )
        assert _finalizers(cluster, "fin-new") == []
        # While the operator runs, a delete completes at once, and after it stops too.
        cluster.kubectl("delete", "lazyimage", "fin-new", "--timeout=30s")
        create(cluster, _lazyimage("fin-after"))
        wait_for(
            "the status of fin-after",
            lambda: (_get(cluster, "fin-after").get("status") or {}).get("summary"),
            60,
            operator.log,
        )
        assert operator.stop() == 0, operator.log()
        assert _finalizers(cluster, "fin-after") == []
        cluster.kubectl("delete", "lazyimage", "fin-after", "--timeout=30s")
        gone = cluster.kubectl("get", "lazyimage", "fin-after", check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr
    finally:
        cluster.kubectl(
            "patch", "lazyimage", "fin-old", "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip
        for name in ("fin-old", "fin-new", "fin-after"):
            cluster.kubectl("delete", "lazyimage", name, "--ignore-not-found", check=False)
