"""The agent's HTTP endpoint: /metrics, /healthz, /readyz, /status and the control API.

It runs in its own thread (http.server), so metrics and health stay answerable however busy
the trio loop is; control calls cross into trio with ``trio.from_thread.run``.

Control API (JSON):
    POST   /v1/layers                {"ref", "digest", "tocDigest", "size"?, "background"?}
    GET    /v1/layers                -> the mounted layers
    DELETE /v1/layers/NAME
    GET    /v1/layers/NAME/profile   -> the first reads of each file since the mount
    POST   /v1/prefetch              {"ref", "digest", "tocDigest", "size"?, "paths"?}
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lazyimage import errors, metrics

__all__ = ["AgentHTTPServer", "ControlAPI", "RequestError"]

log = structlog.get_logger(__name__)
_MAX_BODY = 1 << 20


class RequestError(Exception):
    """A control request that is wrong as sent (HTTP 400) or names nothing (404)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class ControlAPI(Protocol):
    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    async def mount_layer(self, request: dict[str, Any]) -> dict[str, Any]: ...

    async def unmount_layer(self, name: str) -> None: ...

    def layers(self) -> list[dict[str, Any]]: ...

    def profile(self, name: str) -> list[dict[str, Any]]: ...

    async def prefetch(self, request: dict[str, Any]) -> dict[str, Any]: ...


def _status_for(exc: BaseException) -> HTTPStatus:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, ValueError):
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, errors.NotFoundError):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, errors.AuthError):
        return HTTPStatus.FORBIDDEN
    if isinstance(exc, errors.LazyImageError):
        return HTTPStatus.BAD_GATEWAY
    return HTTPStatus.INTERNAL_SERVER_ERROR


class AgentHTTPServer:
    def __init__(
        self,
        listen: str,
        api: ControlAPI,
        trio_token: trio.lowlevel.TrioToken,
        *,
        control: bool = True,
    ) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--listen {listen!r} is not HOST:PORT")
        self._host = host
        self._api = api
        self._control = control
        self._token = trio_token
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-http", daemon=True
        )

    @property
    def address(self) -> str:
        return f"{self._host}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return trio.from_thread.run(fn, trio_token=self._token)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "lazyimage-agent"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not logged one by one; metrics cover them

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                try:
                    outer._route(self, method)
                except Exception as exc:
                    status = _status_for(exc)
                    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
                        log.exception("control_request_failed", path=self.path)
                    self.send_json(status, {"error": str(exc)})

            def body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    raise RequestError("request body too large")
                try:
                    doc = json.loads(self.rfile.read(length) or b"{}")
                except ValueError as exc:
                    raise RequestError(f"request body is not JSON: {exc}") from exc
                if not isinstance(doc, dict):
                    raise RequestError("request body is not a JSON object")
                return doc

            def send_json(self, status: HTTPStatus, doc: Any) -> None:
                self.send_bytes(status, json.dumps(doc).encode(), "application/json")

            def send_bytes(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, h: Any, method: str) -> None:
        path = h.path.split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        api = self._api
        if method == "GET" and path == "/metrics":
            h.send_bytes(HTTPStatus.OK, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
        elif method == "GET" and path == "/healthz":
            h.send_bytes(HTTPStatus.OK, b"ok\n", "text/plain")
        elif method == "GET" and path == "/readyz":
            ready = api.ready()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            h.send_bytes(status, b"ready\n" if ready else b"not ready\n", "text/plain")
        elif method == "GET" and path == "/status":
            h.send_json(HTTPStatus.OK, api.status())
        elif parts[0] == "v1" and not self._control:
            # The port also serves probes and metrics, so it is reachable from the cluster;
            # nothing there may mount, unmount or fetch unless the control API is asked for.
            raise RequestError(
                "the control API is off (--no-control-api); prefetch orders come through the "
                "node's LazyImageNode",
                HTTPStatus.FORBIDDEN,
            )
        elif parts[:2] == ["v1", "layers"] and len(parts) == 2:
            if method == "POST":
                request = h.body()
                h.send_json(HTTPStatus.CREATED, self._call(lambda: api.mount_layer(request)))
            elif method == "GET":
                h.send_json(HTTPStatus.OK, api.layers())
            else:
                raise RequestError("use GET or POST", HTTPStatus.METHOD_NOT_ALLOWED)
        elif parts[:2] == ["v1", "layers"] and len(parts) == 3 and method == "DELETE":
            self._call(lambda: api.unmount_layer(parts[2]))
            h.send_json(HTTPStatus.OK, {"removed": parts[2]})
        elif parts[:2] == ["v1", "layers"] and parts[3:] == ["profile"] and method == "GET":
            h.send_json(HTTPStatus.OK, api.profile(parts[2]))
        elif path == "/v1/prefetch" and method == "POST":
            request = h.body()
            h.send_json(HTTPStatus.OK, self._call(lambda: api.prefetch(request)))
        else:
            raise RequestError(f"no route {method} {path}", HTTPStatus.NOT_FOUND)
