"""Unit tests of the watch-stream parser, of ``watch_object``'s resume logic and of how
apiserver answers become errors, against a scripted apiserver on httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
from lazyimage.kube import (
    ConflictError,
    GoneError,
    KubeClient,
    KubeConfig,
    KubeError,
    NotFoundError,
    ResourcePath,
    WatchEvent,
)
from lazyimage.kube._watch import WATCH_RETRY, parse_event
from lazyimage.retry import RetryPolicy

from tests.fixtures.kube_exec import kubeconfig_doc

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(30),
    # Closing a watch before its stream ends leaves httpx 0.28's nested body generators
    # (aiter_lines > aiter_text > ...) to the garbage collector, which trio reports
    # (encode/httpx#3686). Only those generators are excused; ours are closed explicitly.
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpx\.:ResourceWarning"),
    pytest.mark.filterwarnings(r"ignore:Async generator 'httpcore\.:ResourceWarning"),
]

NODES = ResourcePath("lazyimage.io", "v1alpha1", "lazyimagenodes")
NODE_PATH = "/apis/lazyimage.io/v1alpha1/lazyimagenodes"
TOKEN = "unit-test-bearer-token"


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # The agent runs on trio; asyncio shows nothing here is tied to one event loop.
    return str(request.param)


def _node(version: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "lazyimage.io/v1alpha1",
        "kind": "LazyImageNode",
        "metadata": {"name": "node-a", "resourceVersion": version},
        "spec": spec or {},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _bookmark(version: str) -> dict[str, Any]:
    return {"kind": "LazyImageNode", "metadata": {"resourceVersion": version}}


def _listing(version: str, *items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "kind": "LazyImageNodeList",
            "metadata": {"resourceVersion": version},
            "items": items,
        },
    )


def _stream(*lines: bytes) -> httpx.Response:
    return httpx.Response(200, content=b"".join(lines))


class _BrokenStream(httpx.AsyncByteStream):
    """A watch body that sends some lines, then loses the connection."""

    def __init__(self, *lines: bytes) -> None:
        self.lines = lines

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield line
        raise httpx.ReadError("connection reset by peer")


Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


class ScriptedApiserver:
    """Answers requests in order from a script and records them; running out is a failure."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert self.answers, f"unexpected request {request.method} {request.url}"
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer

    def kinds(self) -> list[str]:
        """``list`` or ``watch@RV`` for each request so far."""
        return [
            f"watch@{r.url.params.get('resourceVersion')}"
            if r.url.params.get("watch") == "1"
            else "list"
            for r in self.requests
        ]


def _client(server: ScriptedApiserver) -> KubeClient:
    return KubeClient(
        KubeConfig.from_dict(kubeconfig_doc("https://kube.test:6443", {"token": TOKEN})),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(
            attempts=None, base_delay=0.001, max_delay=0.004, min_delay=0.001, total_timeout=None
        ),
    )


async def _states(server: ScriptedApiserver, count: int) -> list[dict[str, Any] | None]:
    """The first ``count`` states that watch_object yields for node-a."""
    states: list[dict[str, Any] | None] = []
    with anyio.fail_after(10):
        async with _client(server) as client, aclosing(client.watch_object(NODES, "node-a")) as it:
            async for state in it:
                states.append(state)
                if len(states) == count:
                    break
    return states


def _version(state: dict[str, Any] | None) -> str | None:
    return None if state is None else str(state["metadata"]["resourceVersion"])


# -- the stream parser -------------------------------------------------------------------------


def test_parse_event_kinds() -> None:
    event = parse_event(_line("MODIFIED", _node("7")).decode(), "WATCH", NODE_PATH)
    assert event == WatchEvent("MODIFIED", _node("7"))
    assert event.resource_version == "7"
    bookmark = parse_event(_line("BOOKMARK", _bookmark("9")).decode(), "WATCH", NODE_PATH)
    assert bookmark.type == "BOOKMARK" and bookmark.resource_version == "9"


def test_parse_event_errors() -> None:
    expired = _status(410, "Expired", "too old resource version: 5 (12)")
    with pytest.raises(GoneError) as gone:
        parse_event(_line("ERROR", expired).decode(), "WATCH", NODE_PATH)
    assert gone.value.status == 410 and gone.value.reason == "Expired"
    assert str(gone.value) == f"WATCH {NODE_PATH}: 410 Expired: too old resource version: 5 (12)"

    internal = _status(500, "InternalError", "etcd is sad")
    with pytest.raises(KubeError, match="500 InternalError: etcd is sad") as other:
        parse_event(_line("ERROR", internal).decode(), "WATCH", NODE_PATH)
    assert type(other.value) is KubeError
    with pytest.raises(KubeError, match="invalid watch event"):
        parse_event("{not json", "WATCH", NODE_PATH)
    with pytest.raises(KubeError, match="unknown watch event type 'SURPRISE'"):
        parse_event(_line("SURPRISE", {}).decode(), "WATCH", NODE_PATH)


def test_watch_retry_is_capped_and_bounded() -> None:
    backoff = WATCH_RETRY
    assert backoff.attempts is None and backoff.total_timeout is None  # never gives up
    nominal = [backoff.delay(n, rand=lambda: 1.0) for n in range(1, 8)]
    assert nominal == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(1, rand=lambda: 0.0) == 0.5  # never below the first delay
    assert backoff.delay(2, rand=lambda: 0.0) == 0.5  # jitter draws from [delay/2, delay]
    assert backoff.delay(6, rand=lambda: 0.0) == 5.0
    assert backoff.delay(100_000) <= 10.0  # a long outage does not overflow


async def test_watch_request_and_events() -> None:
    server = ScriptedApiserver(
        _stream(_line("ADDED", _node("5")), b"\n", _line("BOOKMARK", _bookmark("6"))),
    )
    with anyio.fail_after(10):
        async with _client(server) as client:
            events = [
                e
                async for e in client.watch(
                    NODES, field_selector="metadata.name=node-a", resource_version="4"
                )
            ]
    assert [(e.type, e.resource_version) for e in events] == [("ADDED", "5"), ("BOOKMARK", "6")]
    (request,) = server.requests
    assert request.url.path == NODE_PATH
    assert dict(request.url.params) == {
        "watch": "1",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
        "fieldSelector": "metadata.name=node-a",
        "resourceVersion": "4",
    }


async def test_watch_error_answers() -> None:
    server = ScriptedApiserver(
        _stream(_line("ADDED", _node("5")), _line("ERROR", _status(410, "Expired", "too old"))),
        httpx.Response(403, json=_status(403, "Forbidden", "agents may not watch that")),
    )
    seen: list[str] = []
    with anyio.fail_after(10):
        async with _client(server) as client:
            with pytest.raises(GoneError, match="too old"):
                async for event in client.watch(NODES):
                    seen.append(event.type)
            with pytest.raises(KubeError) as caught:
                async for _ in client.watch(NODES):
                    pass
    assert seen == ["ADDED"]
    assert caught.value.status == 403
    assert str(caught.value) == f"WATCH {NODE_PATH}: 403 Forbidden: agents may not watch that"
    assert TOKEN not in str(caught.value)


# -- watch_object: resume logic ----------------------------------------------------------------


async def test_bookmarks_only_advance_the_resource_version() -> None:
    server = ScriptedApiserver(
        _listing("10", _node("5")),
        _stream(_line("BOOKMARK", _bookmark("15"))),
        _stream(_line("BOOKMARK", _bookmark("18")), _line("MODIFIED", _node("19"))),
    )
    states = await _states(server, 2)
    assert [_version(s) for s in states] == ["5", "19"]
    assert server.kinds() == ["list", "watch@10", "watch@15"]
    assert server.requests[0].url.params["fieldSelector"] == "metadata.name=node-a"


async def test_gone_lists_again() -> None:
    server = ScriptedApiserver(
        _listing("10", _node("5")),
        _stream(_line("ERROR", _status(410, "Expired", "too old resource version"))),
        _listing("30", _node("25", {"orders": [1]})),
        _stream(_line("MODIFIED", _node("31"))),
    )
    states = await _states(server, 3)
    assert [_version(s) for s in states] == ["5", "25", "31"]
    assert states[1] is not None and states[1]["spec"] == {"orders": [1]}
    assert server.kinds() == ["list", "watch@10", "list", "watch@30"]


async def test_a_new_list_does_not_repeat_an_unchanged_state() -> None:
    server = ScriptedApiserver(
        _listing("10", _node("5")),
        httpx.Response(410, json=_status(410, "Gone", "too old")),
        _listing("40", _node("5")),
        _stream(_line("MODIFIED", _node("41"))),
    )
    states = await _states(server, 2)
    assert [_version(s) for s in states] == ["5", "41"]
    assert server.kinds() == ["list", "watch@10", "list", "watch@40"]


async def test_a_dropped_stream_resumes_from_the_last_version() -> None:
    server = ScriptedApiserver(
        _listing("10", _node("5")),
        httpx.Response(200, stream=_BrokenStream(_line("MODIFIED", _node("11")))),
        _stream(),  # a watch that the server ends with nothing to say
        _stream(_line("MODIFIED", _node("12"))),
    )
    states = await _states(server, 3)
    assert [_version(s) for s in states] == ["5", "11", "12"]
    assert server.kinds() == ["list", "watch@10", "watch@11", "watch@11"]


async def test_absent_added_and_deleted() -> None:
    server = ScriptedApiserver(
        _listing("10"),
        _stream(_line("ADDED", _node("12")), _line("DELETED", _node("13"))),
    )
    states = await _states(server, 3)
    assert [_version(s) for s in states] == [None, "12", None]


async def test_a_collection_lists_then_watches_then_lists_again_after_gone() -> None:
    """watch_collection: the listed items come as ADDED, then the watch's events with the
    field selector passed on; bookmarks are not passed on; after 410 the list comes again."""
    other = {**_node("6"), "metadata": {"name": "node-b", "resourceVersion": "6"}}
    server = ScriptedApiserver(
        _listing("10", _node("5"), other),
        _stream(_line("BOOKMARK", _bookmark("12")), _line("MODIFIED", _node("13"))),
        _stream(_line("ERROR", _status(410, "Expired", "too old resource version"))),
        _listing("20", _node("13")),
        _stream(_line("DELETED", _node("21"))),
    )
    seen: list[tuple[str, str | None]] = []
    with anyio.fail_after(10):
        async with _client(server) as client:
            events = client.watch_collection(NODES, field_selector="spec.x!=")
            async with aclosing(events) as it:
                async for event in it:
                    seen.append((event.type, _version(event.object)))
                    if len(seen) == 5:
                        break
    assert seen == [
        ("ADDED", "5"),
        ("ADDED", "6"),
        ("MODIFIED", "13"),
        ("ADDED", "13"),  # listed again: handlers must be idempotent
        ("DELETED", "21"),
    ]
    assert server.kinds() == ["list", "watch@10", "watch@13", "list", "watch@20"]
    assert {r.url.params["fieldSelector"] for r in server.requests} == {"spec.x!="}


async def test_connection_and_server_errors_are_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server = ScriptedApiserver(
        refuse,
        httpx.Response(503, text="<html>upstream unavailable</html>"),
        httpx.Response(429, json=_status(429, "TooManyRequests", "slow down")),
        _listing("10", _node("5")),
        refuse,
        _stream(_line("MODIFIED", _node("6"))),
    )
    states = await _states(server, 2)
    assert [_version(s) for s in states] == ["5", "6"]
    assert server.kinds() == ["list", "list", "list", "list", "watch@10", "watch@10"]


async def test_a_collection_watch_with_max_failures_gives_up_after_that_many() -> None:
    """A 403 may be RBAC not granted yet: waited out, but with ``max_failures`` the third in
    a row is raised; a success between failures starts the count again."""
    forbidden = _status(403, "Forbidden", "pods is forbidden")
    server = ScriptedApiserver(
        httpx.Response(403, json=forbidden),
        httpx.Response(403, json=forbidden),
        _listing("10", _node("5")),
        _stream(_line("MODIFIED", _node("6"))),
        httpx.Response(403, json=forbidden),
        httpx.Response(403, json=forbidden),
        httpx.Response(403, json=forbidden),
        _listing("99"),  # never reached
    )
    seen: list[str | None] = []
    with anyio.fail_after(10), pytest.raises(KubeError) as caught:
        async with _client(server) as client:
            events = client.watch_collection(NODES, max_failures=3)
            async with aclosing(events) as it:
                async for event in it:
                    seen.append(_version(event.object))
    assert caught.value.status == 403
    assert seen == ["5", "6"]
    assert server.kinds() == ["list", "list", "list", "watch@10", "watch@6", "watch@6", "watch@6"]


async def test_errors_that_waiting_cannot_fix_are_raised() -> None:
    server = ScriptedApiserver(
        httpx.Response(400, json=_status(400, "BadRequest", "unable to parse fieldSelector")),
    )
    with pytest.raises(KubeError) as caught:
        await _states(server, 1)
    assert caught.value.status == 400
    assert "GET /apis/lazyimage.io/v1alpha1/lazyimagenodes" in str(caught.value)
    assert "unable to parse fieldSelector" in str(caught.value)


# -- errors and request shapes of the other verbs ----------------------------------------------


async def test_errors_carry_the_status_message() -> None:
    server = ScriptedApiserver(
        httpx.Response(404, json=_status(404, "NotFound", 'lazyimagenodes "node-b" not found')),
        httpx.Response(409, json=_status(409, "Conflict", "the object has been modified")),
        httpx.Response(502, text="<html><body>Bad Gateway</body></html>"),
    )
    with anyio.fail_after(10):
        async with _client(server) as client:
            with pytest.raises(NotFoundError) as missing:
                await client.get(NODES, "node-b")
            body = _node("5") | {"status": {"ready": True}}
            with pytest.raises(ConflictError) as conflict:
                await client.replace_status(NODES, "node-a", body)
            with pytest.raises(KubeError) as proxy:
                await client.delete(NODES, "node-a")
    assert str(missing.value) == (
        f'GET {NODE_PATH}/node-b: 404 NotFound: lazyimagenodes "node-b" not found'
    )
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert str(conflict.value) == (
        f"PUT {NODE_PATH}/node-a/status: 409 Conflict: the object has been modified"
    )
    assert (
        str(proxy.value) == f"DELETE {NODE_PATH}/node-a: 502: <html><body>Bad Gateway</body></html>"
    )
    assert server.requests[1].url.params["fieldValidation"] == "Strict"
    assert json.loads(server.requests[1].content) == body


async def test_merge_patch_request() -> None:
    server = ScriptedApiserver(httpx.Response(200, json=_node("8")))
    with anyio.fail_after(10):
        async with _client(server) as client:
            result = await client.merge_patch(
                NODES, "node-a", {"status": {"layers": 3}}, subresource="status"
            )
            with pytest.raises(ValueError, match="resourceVersion"):
                await client.replace_status(NODES, "node-a", {"status": {}})
    assert result == _node("8")
    (request,) = server.requests
    assert request.method == "PATCH"
    assert request.url.path == f"{NODE_PATH}/node-a/status"
    assert request.url.params["fieldValidation"] == "Strict"
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert json.loads(request.content) == {"status": {"layers": 3}}


def test_resource_paths() -> None:
    configmaps = ResourcePath("", "v1", "configmaps", namespace="team-a")
    assert configmaps.collection() == "/api/v1/namespaces/team-a/configmaps"
    assert configmaps.item("cm") == "/api/v1/namespaces/team-a/configmaps/cm"
    assert NODES.item("node-a", "status") == f"{NODE_PATH}/node-a/status"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="invalid name"):
            NODES.item(bad)
