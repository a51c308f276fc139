"""Which Prepare labels make a layer remote, and the reason when they don't."""

from __future__ import annotations

import pytest
from lazyimage import names
from lazyimage.agent.remote import NotEligibleError, image_layers, spec_from_labels

pytestmark = pytest.mark.timeout(10)

LAYER = "sha256:" + "a" * 64
TOC = "sha256:" + "b" * 64


def test_cri_labels() -> None:
    spec = spec_from_labels(
        {
            names.LABEL_CRI_IMAGE_REF: "127.0.0.1:5000/lazy/python:esgz",
            names.LABEL_CRI_LAYER_DIGEST: LAYER,
            names.TOC_DIGEST_ANNOTATION: TOC,
        }
    )
    assert (spec.ref.registry, spec.ref.repository) == ("127.0.0.1:5000", "lazy/python")
    assert (spec.digest, spec.toc_digest, spec.name) == (LAYER, TOC, "a" * 64)


def test_the_reference_snapshotters_own_labels() -> None:
    spec = spec_from_labels(
        {
            names.LABEL_STARGZ_REFERENCE: "registry.example/app:1",
            names.LABEL_STARGZ_DIGEST: LAYER,
            names.TOC_DIGEST_ANNOTATION: TOC,
        }
    )
    assert spec.digest == LAYER


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({names.LABEL_CRI_IMAGE_REF: "r/a:1", names.LABEL_CRI_LAYER_DIGEST: LAYER}, "not-estargz"),
        ({names.TOC_DIGEST_ANNOTATION: TOC}, "no-image-labels"),
        (
            {
                names.LABEL_CRI_IMAGE_REF: "r/a:1",
                names.LABEL_CRI_LAYER_DIGEST: "sha256:short",
                names.TOC_DIGEST_ANNOTATION: TOC,
            },
            "bad-labels",
        ),
        (
            {
                names.LABEL_CRI_IMAGE_REF: "Not A Ref",
                names.LABEL_CRI_LAYER_DIGEST: LAYER,
                names.TOC_DIGEST_ANNOTATION: TOC,
            },
            "bad-labels",
        ),
    ],
)
def test_ineligible_layers_say_why(labels: dict[str, str], reason: str) -> None:
    with pytest.raises(NotEligibleError) as failure:
        spec_from_labels(labels)
    assert failure.value.reason == reason


def test_image_layers_label() -> None:
    other = "sha256:" + "c" * 64
    listed = {names.LABEL_CRI_IMAGE_LAYERS: f"{LAYER}, {other},sha256:cut-short,"}
    assert image_layers(listed) == [LAYER, other]
    assert image_layers({}) == []
