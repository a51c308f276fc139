"""The agent's HTTP endpoints: /metrics, /healthz, /readyz and /status on a TCP port, and the
control API on a unix socket.

The control API can mount, unmount and fetch, and has no authentication of its own, so it is
never served on the TCP port (reachable from the network, in a cluster from other pods): only
on a unix socket made owner-only (0600) before it listens, whose peers must be root or the
agent's own user. Each server runs in its own threads (http.server), so metrics and health
stay answerable however busy the trio loop is; control calls cross into trio with
``trio.from_thread.run``.

Control API (JSON, on the unix socket):
    POST   /v1/layers                {"ref", "digest", "tocDigest", "size"?, "background"?}
    GET    /v1/layers                -> the mounted layers
    DELETE /v1/layers/NAME
    GET    /v1/layers/NAME/profile   -> the first reads of each file since the mount
    POST   /v1/prefetch              {"ref", "digest", "tocDigest", "size"?, "paths"?}
    POST   /v1/images                {"image"}: prewarm an image, as an order does
"""

from __future__ import annotations

import errno
import json
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lazyimage import errors, metrics

__all__ = ["AgentHTTPServer", "ControlAPI", "ControlSocketServer", "RequestError"]

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

    async def prewarm_image(self, request: dict[str, Any]) -> dict[str, Any]: ...


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


class ControlSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a unix socket that only its owner (and root) can use."""

    daemon_threads = True

    def __init__(self, path: Path, handler: type[BaseHTTPRequestHandler]) -> None:
        self.path = path
        _clear_stale_socket(path)
        super().__init__(str(path), handler)

    def server_bind(self) -> None:
        # Owner-only before listen(): until then no one can connect, so there is no window
        # in which the socket is open to others.
        self.socket.bind(str(self.path))
        os.chmod(self.path, 0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Mode 0600 already keeps others out; the peer check holds even if it is loosened.
        creds = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return True
        log.warning("control_connection_refused", uid=uid, socket=str(self.path))
        return False

    def server_close(self) -> None:
        super().server_close()
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by an earlier agent; refuse a live one or anything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST, "--control-socket exists and is not a socket", str(path)
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise OSError(errno.EADDRINUSE, "--control-socket is in use by another process", str(path))


class AgentHTTPServer:
    """/metrics, /healthz, /readyz and /status on ``listen``; with ``control_socket``, the
    control API on that unix socket (and nowhere else)."""

    def __init__(
        self,
        listen: str,
        api: ControlAPI,
        trio_token: trio.lowlevel.TrioToken,
        *,
        control_socket: Path | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--listen {listen!r} is not HOST:PORT")
        self._host = host
        self._api = api
        self._token = trio_token
        self._public = ThreadingHTTPServer(
            (host.strip("[]"), int(port)), _handler_class(self._route_public)
        )
        self._public.daemon_threads = True
        self._servers: list[socketserver.BaseServer] = [self._public]
        if control_socket is not None:
            try:
                control = ControlSocketServer(control_socket, _handler_class(self._route_control))
            except BaseException:
                self._public.server_close()
                raise
            self._servers.append(control)
        self._threads = [
            threading.Thread(target=server.serve_forever, name=f"agent-http-{i}", daemon=True)
            for i, server in enumerate(self._servers)
        ]

    @property
    def address(self) -> str:
        return f"{self._host}:{self._public.server_port}"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return trio.from_thread.run(fn, trio_token=self._token)

    def _route_public(self, h: Any, method: str, path: str) -> None:
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
        elif path == "/v1" or path.startswith("/v1/"):
            raise RequestError(
                "the control API is not served on this port, which the network can reach; the "
                "agent serves it only on the unix socket given by --control-socket",
                HTTPStatus.NOT_FOUND,
            )
        else:
            raise RequestError(f"no route {method} {path}", HTTPStatus.NOT_FOUND)

    def _route_control(self, h: Any, method: str, path: str) -> None:
        parts = path.strip("/").split("/")
        api = self._api
        if parts[:2] == ["v1", "layers"] and len(parts) == 2:
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
        elif path == "/v1/images" and method == "POST":
            request = h.body()
            h.send_json(HTTPStatus.OK, self._call(lambda: api.prewarm_image(request)))
        else:
            raise RequestError(f"no route {method} {path}", HTTPStatus.NOT_FOUND)


Route = Callable[[Any, str, str], None]


def _handler_class(route: Route) -> type[BaseHTTPRequestHandler]:
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
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            try:
                route(self, method, path)
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
