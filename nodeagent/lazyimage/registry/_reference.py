"""Image references: ``[HOST[:PORT]/]REPO[:TAG][@DIGEST]``, normalised the way docker does."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from lazyimage.errors import InvalidReferenceError

__all__ = ["DOCKER_HUB", "DOCKER_HUB_HOST", "Reference", "connect_host"]

DOCKER_HUB = "docker.io"
# Docker Hub's name and the host that actually serves its API differ.
DOCKER_HUB_HOST = "registry-1.docker.io"
_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_HOST})

# The grammar of distribution's reference package, restricted to what registries accept.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_NAME = 255


def connect_host(registry: str) -> str:
    """The host to open connections to for a registry name (docker.io is served elsewhere)."""
    return DOCKER_HUB_HOST if registry in _HUB_ALIASES else registry


def _looks_like_domain(first: str) -> bool:
    # Same rule as docker: a first component is a host if it has a dot or a port, is
    # "localhost", or has upper case (which a repository path cannot have).
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``tag`` and ``digest`` may both be set; the digest wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise a reference; a bare name gets ``docker.io`` and tag ``latest``."""
        if not text or text != text.strip():
            raise InvalidReferenceError(f"invalid image reference {text!r}: empty or padded")
        rest = text
        digest: str | None = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise InvalidReferenceError(
                    f"invalid image reference {text!r}: digest must be sha256:<64 hex digits>"
                )
        tag: str | None = None
        # A colon after the last slash is a tag separator; before it, a port.
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise InvalidReferenceError(f"invalid image reference {text!r}: bad tag {tag!r}")
        first, sep, remainder = rest.partition("/")
        if sep and _looks_like_domain(first):
            registry, repository = first, remainder
            if not _DOMAIN_RE.match(registry):
                raise InvalidReferenceError(
                    f"invalid image reference {text!r}: bad registry host {registry!r}"
                )
        else:
            registry, repository = DOCKER_HUB, rest
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        if not _PATH_RE.match(repository):
            raise InvalidReferenceError(
                f"invalid image reference {text!r}: bad repository {repository!r}"
            )
        if len(registry) + 1 + len(repository) > _MAX_NAME:
            raise InvalidReferenceError(f"invalid image reference {text!r}: name too long")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def host(self) -> str:
        """Where to connect: ``registry`` except for Docker Hub."""
        return connect_host(self.registry)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What a manifest request asks for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to ``digest`` (the tag is kept for display)."""
        if not _DIGEST_RE.match(digest):
            raise InvalidReferenceError(f"invalid digest {digest!r}")
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag``; any digest is dropped since it named other content."""
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
