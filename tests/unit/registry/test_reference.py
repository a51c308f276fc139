"""Reference parsing and normalisation."""

from __future__ import annotations

import pytest
from lazyimage.errors import InvalidReferenceError
from lazyimage.registry import Reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "host"),
    [
        ("127.0.0.1:5000/lib/python:3.11", "127.0.0.1:5000", "lib/python", "3.11", None, None),
        ("busybox", "docker.io", "library/busybox", "latest", None, "registry-1.docker.io"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, None),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None, None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None, None),
        ("localhost/app", "localhost", "app", "latest", None, None),
        ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", "v1", None, None),
        ("ghcr.io/org/app@" + DIGEST, "ghcr.io", "org/app", None, DIGEST, None),
        ("ghcr.io/org/app:v2@" + DIGEST, "ghcr.io", "org/app", "v2", DIGEST, None),
        ("Registry/app", "Registry", "app", "latest", None, None),
        ("UPPER/app", "UPPER", "app", "latest", None, None),
        ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None, None),
        ("quay.io/a/b__c-d.e:v_1.0-rc", "quay.io", "a/b__c-d.e", "v_1.0-rc", None, None),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None, host: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.host == (host or ("registry-1.docker.io" if registry == "docker.io" else registry))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "host:5000/App",
        "host/app:",
        "host/app:-bad",
        "host/app@sha256:short",
        "host/app@md5:" + "a" * 32,
        "host//app",
        "host/app/",
        "host/a..b",
        "ho_st:5000/app",
        "host:port/app",
        "host/" + "a" * 300,
        "host/app:" + "t" * 129,
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        Reference.parse(text)


def test_invalid_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad tag"):
        Reference.parse("host/app:-x")
    with pytest.raises(ValueError, match="bad repository"):
        Reference.parse("host/app:/x")


def test_str_round_trips() -> None:
    for text in ("127.0.0.1:5000/lib/python:3.11", "ghcr.io/org/app:v2@" + DIGEST):
        assert str(Reference.parse(text)) == text
    assert str(Reference.parse("busybox")) == "docker.io/library/busybox:latest"
    assert Reference.parse(str(Reference.parse("busybox"))) == Reference.parse("busybox")


def test_with_digest_and_with_tag() -> None:
    ref = Reference.parse("host:5000/app:1")
    pinned = ref.with_digest(DIGEST)
    assert (pinned.tag, pinned.digest, pinned.identifier) == ("1", DIGEST, DIGEST)
    retagged = pinned.with_tag("2")
    assert (retagged.tag, retagged.digest, retagged.identifier) == ("2", None, "2")
    assert ref.identifier == "1"
    with pytest.raises(InvalidReferenceError):
        ref.with_digest("sha256:nothex")
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("no/slash")
