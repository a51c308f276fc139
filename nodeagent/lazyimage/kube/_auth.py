"""Bearer-token authentication that reads a rotating token file for each request."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import httpx

from lazyimage.kube._errors import KubeConfigError

__all__ = ["BearerAuth"]


class BearerAuth(httpx.Auth):
    """Sends ``Authorization: Bearer``. A ``token_file`` is read on every request: kubelet
    rewrites projected service account tokens before they expire, and reading a small file
    costs less than a request that fails with 401."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._token_file = token_file

    def current_token(self) -> str:
        if self._token_file is None:
            return self._token or ""
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            raise KubeConfigError(f"cannot read token file {self._token_file}: {exc}") from exc
        if not token:
            raise KubeConfigError(f"token file {self._token_file} is empty")
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.current_token()}"
        yield request
