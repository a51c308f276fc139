"""The node's CRI image service (containerd's main socket): pull an image as kubelet would.

A prewarm that pulls through it leaves the image known to containerd, its eStargz layers
committed as remote snapshots of the lazyimage snapshotter, so kubelet's ``ImageStatus``
finds the image and its ``PullImage`` costs nothing. The calls block; the agent runs them in
a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lazyimage import errors
from lazyimage.grpcwire import Channel, Message, RpcError
from lazyimage.snapshotter._proto.cri.runtime.v1 import api_pb2 as cri

__all__ = ["CriError", "CriImageService", "PullAuth"]

# A pull of a lazy image takes about as long as its manifest, config and TOCs; an image
# with layers that are not eStargz is downloaded in full, as the pod would download it.
_PULL_TIMEOUT = 900.0
_STATUS_TIMEOUT = 30.0

_HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler"
_SERVICE = "/runtime.v1.ImageService/"

_T = TypeVar("_T")


class CriError(errors.LazyImageError):
    """The CRI image service refused a call, or could not be reached."""


@dataclass(frozen=True)
class PullAuth:
    """What kubelet would send in ``PullImageRequest.auth``, from a pull secret.
    ``server_address`` (``https://HOST``) limits them to the registry's host: containerd
    parses it as a URL and sends them nowhere else, mirrors included."""

    server_address: str
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:
        return f"PullAuth(username={self.username!r}, ...)"  # never log secrets


class CriImageService:
    """``runtime.v1.ImageService`` on ``socket``. ``runtime_handler``: the runtime class's
    handler whose snapshotter the image is pulled into (containerd 2.x keeps a snapshotter
    per handler; kubelet passes the handler with its ``RuntimeClassInImageCriApi`` gate)."""

    def __init__(self, socket: Path, runtime_handler: str = "") -> None:
        self.socket = socket
        self.runtime_handler = runtime_handler
        # Connects when a call needs it, and again after containerd restarted.
        self._channel = Channel(socket)

    def close(self) -> None:
        self._channel.close()

    def pull(self, image: str, auth: PullAuth | None = None) -> str:
        """Pull ``image`` (the reference as the pod names it, so that kubelet finds it by
        that name); the image's id (``sha256:`` of its config)."""
        request = cri.PullImageRequest(
            image=self._spec(image),
            auth=None if auth is None else cri.AuthConfig(**vars(auth)),
            sandbox_config=self._sandbox(),
        )
        answer = self._call(
            "PullImage", image, request, cri.PullImageResponse.FromString, _PULL_TIMEOUT
        )
        return answer.image_ref

    def present(self, image: str) -> bool:
        """Whether the node has ``image``, as kubelet asks before it pulls."""
        request = cri.ImageStatusRequest(image=self._spec(image))
        answer = self._call(
            "ImageStatus", image, request, cri.ImageStatusResponse.FromString, _STATUS_TIMEOUT
        )
        return answer.HasField("image")

    def _spec(self, image: str) -> cri.ImageSpec:
        return cri.ImageSpec(image=image, runtime_handler=self.runtime_handler)

    def _sandbox(self) -> cri.PodSandboxConfig | None:
        # containerd 2.2 and later take the handler from the image spec, but only with a
        # sandbox config present (kubelet always sends one); 2.0 and 2.1 read it from the
        # sandbox's annotation instead, which the later ones ignore when the field is set.
        if not self.runtime_handler:
            return None
        return cri.PodSandboxConfig(annotations={_HANDLER_ANNOTATION: self.runtime_handler})

    def _call(
        self,
        verb: str,
        image: str,
        request: Message,
        parse: Callable[[bytes], _T],
        timeout: float,
    ) -> _T:
        try:
            return self._channel.unary(_SERVICE + verb, request, parse, timeout=timeout)
        except RpcError as exc:
            detail = f"{exc.code.name}: {exc.message}"
            raise CriError(f"CRI {verb} {image} on {self.socket}: {detail}") from None
