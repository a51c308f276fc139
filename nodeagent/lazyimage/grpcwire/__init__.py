"""gRPC over HTTP/2 on unix sockets, small enough for the node agent: unary and
server-streaming methods served from a thread pool (``Server``), unary calls with a deadline
(``Channel``). Messages are opaque bytes here; the callers parse them (protobuf).

    server = Server({"/pkg.Service/Get": unary(GetRequest.FromString, get)}, path)
    server.start()
    ...
    server.stop(grace=5.0)

    channel = Channel(path)
    reply = channel.unary("/pkg.Service/Get", request, GetReply.FromString, timeout=30)
"""

from lazyimage.grpcwire._client import Channel
from lazyimage.grpcwire._frames import MAX_MESSAGE, Message
from lazyimage.grpcwire._methods import Method, server_streaming, unary
from lazyimage.grpcwire._server import Server
from lazyimage.grpcwire._status import RpcError, StatusCode

__all__ = [
    "MAX_MESSAGE",
    "Channel",
    "Message",
    "Method",
    "RpcError",
    "Server",
    "StatusCode",
    "server_streaming",
    "unary",
]
