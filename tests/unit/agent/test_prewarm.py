"""Prewarming one image: a layer that fails costs only itself. The layer manager and the
registry client are small fakes here; the real order path, with a real registry and API
server, is tested in tests/integration/operator/test_bad_orders.py."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from lazyimage import errors, names
from lazyimage.agent.layers import LayerSpec
from lazyimage.agent.prewarm import ImagePrewarmer, PrewarmError
from lazyimage.oci import Descriptor, Manifest
from lazyimage.registry import Reference
from lazyimage.registry._client import ResolvedImage

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GOOD, FORGED, CRASHING = ("sha256:" + c * 64 for c in "abc")


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the agent runs on trio


def _layer(digest: str) -> Descriptor:
    return Descriptor(LAYER, digest, 100, {names.TOC_DIGEST_ANNOTATION: "sha256:" + "f" * 64})


class FakeClient:
    async def resolve_image(self, ref: Reference) -> ResolvedImage:
        config = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "0" * 64, 2)
        layers = [_layer(GOOD), _layer(FORGED), _layer(CRASHING)]
        manifest = Manifest("application/vnd.oci.image.manifest.v1+json", config, layers)
        return ResolvedImage(manifest, b"{}", "sha256:" + "9" * 64)


class FakeManager:
    """Fails one layer as a forged TOC would, and one with a bug; the good one takes longer
    than both, so it is still running when they fail."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def prefetch(self, spec: LayerSpec, paths: Any) -> dict[str, Any]:
        if spec.digest == FORGED:
            raise errors.VerificationError("TOC digest mismatch")
        if spec.digest == CRASHING:
            raise KeyError("a bug")
        await trio.sleep(0.05)
        self.finished.append(spec.digest)
        return {"fetchedBytes": 10, "zoneBytes": 20}


async def test_a_failing_layer_is_named_and_the_others_finish() -> None:
    manager = FakeManager()
    prewarmer = ImagePrewarmer(manager, FakeClient())  # type: ignore[arg-type]
    with pytest.raises(PrewarmError) as raised:
        await prewarmer.prewarm("registry.test/app:1")
    # One plain error, never an ExceptionGroup, which the order runner would not catch.
    error = raised.value
    assert isinstance(error, errors.LazyImageError)
    assert set(error.failures) == {FORGED, CRASHING}
    assert "TOC digest mismatch" in error.failures[FORGED]
    assert "internal error: KeyError" in error.failures[CRASHING]
    assert "2 of 3 eStargz layers failed" in str(error) and FORGED in str(error)
    assert manager.finished == [GOOD]
