"""Watch streams: parsing one, and following one object across many.

A watch answer is newline-delimited JSON, one ``{"type", "object"}`` event per line. An
``ERROR`` event carries a Status and ends the stream. ``follow_object`` turns the apiserver's
list-then-watch protocol into the plain sequence of states of one named object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio

from lazyimage.kube._errors import GoneError, KubeError, status_error
from lazyimage.kube._resource import ResourcePath
from lazyimage.retry import RetryPolicy

__all__ = [
    "WATCH_RETRY",
    "WatchEvent",
    "WatchSource",
    "follow_collection",
    "follow_object",
    "parse_event",
    "read_events",
]

log = logging.getLogger("lazyimage.kube")

EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
# Statuses worth waiting out: no answer (None), auth that may be rotating or not yet
# granted, a collection whose CRD is not installed yet, throttling, server trouble.
_RETRYABLE = frozenset({401, 403, 404, 408, 429})
# How long to wait for the server to end a stream after an ERROR event.
_DRAIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str | None:
        return resource_version_of(self.object)


def resource_version_of(obj: dict[str, Any] | None) -> str | None:
    metadata = obj.get("metadata") if obj is not None else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and version else None


def parse_event(line: str, verb: str, path: str) -> WatchEvent:
    """One line of a watch stream. An ERROR event raises its Status as an error (410 as
    GoneError); anything malformed raises KubeError."""
    try:
        event = json.loads(line)
    except ValueError:
        raise KubeError(f"{verb} {path}: invalid watch event {line[:200]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubeError(f"{verb} {path}: invalid watch event {line[:200]!r}")
    kind, obj = event.get("type"), event["object"]
    if kind == "ERROR":
        raise status_error(verb, path, 500, obj)
    if kind not in EVENT_TYPES:
        raise KubeError(f"{verb} {path}: unknown watch event type {kind!r}")
    return WatchEvent(kind, obj)


async def read_events(
    lines: AsyncIterator[str], verb: str, path: str
) -> AsyncGenerator[WatchEvent, None]:
    """The events of a stream of lines; blank lines are skipped."""
    async for line in lines:
        if not line.strip():
            continue
        try:
            event = parse_event(line, verb, path)
        except KubeError:
            # The apiserver ends a watch right after an ERROR event. Reading to that end lets
            # the connection go back to the pool, and lets httpx's nested body iterators
            # finish instead of being left for the garbage collector.
            with anyio.move_on_after(_DRAIN_TIMEOUT):
                async for _ in lines:
                    pass
            raise
        yield event


# How a watch retries: for as long as it is followed, pausing 0.5 s after the first failure
# and doubling up to 10 s, drawn from [delay/2, delay] but never below 0.5 s, so that many
# agents that lost the apiserver together do not all come back at once.
WATCH_RETRY = RetryPolicy(
    attempts=None, base_delay=0.5, max_delay=10.0, min_delay=0.5, total_timeout=None
)


class WatchSource(Protocol):
    """What ``follow_object`` needs from a client."""

    async def list(
        self,
        path: ResourcePath,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]: ...

    def watch(
        self,
        path: ResourcePath,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[WatchEvent, None]: ...


def _retryable(exc: KubeError) -> bool:
    return exc.status is None or exc.status in _RETRYABLE or exc.status >= 500


_UNSEEN = object()
# A watch that ends sooner than this with no event counts as a failure, so that a server or
# proxy that closes every watch at once cannot make the loop spin.
_HEALTHY_WATCH = 1.0


@dataclass(frozen=True)
class _Listed:
    """A fresh list answer: the items, before the watch that follows it."""

    items: list[dict[str, Any]]


async def _follow(
    source: WatchSource,
    path: ResourcePath,
    field_selector: str | None,
    where: str,
    retry: RetryPolicy,
    timeout_seconds: int,
) -> AsyncGenerator[_Listed | WatchEvent, None]:
    """List, then watch from the list's resourceVersion; when a watch ends, watch again from
    the last resourceVersion seen (bookmarks included), and when that is too old (410 Gone),
    list again. Failures are retried after ``retry.delay(n)`` for the n-th in a row; errors
    that waiting cannot fix (400, 422, ...) are raised at once, and the others once
    ``retry.attempts`` come in a row (None: never, for a watch that must outwait, say, a CRD
    not installed yet). ``retry.total_timeout`` is not used: a watch has no end. Bookmarks
    are not passed on."""
    version: str | None = None  # the resourceVersion to watch from; None: list first
    failures = 0  # reset only by a watch that worked, so a list-then-fail cycle backs off
    while True:
        try:
            if version is None:
                listing = await source.list(path, field_selector=field_selector)
                version = resource_version_of(listing)
                items = listing.get("items")
                if version is None or not isinstance(items, list):
                    raise KubeError(f"{where}: a list answer without items or resourceVersion")
                yield _Listed([item for item in items if isinstance(item, dict)])
            started = anyio.current_time()
            news = False
            events = source.watch(
                path,
                field_selector=field_selector,
                resource_version=version,
                timeout_seconds=timeout_seconds,
            )
            async with aclosing(events):
                async for event in events:
                    news = True
                    failures = 0
                    version = event.resource_version or version
                    if event.type != "BOOKMARK":
                        yield event
            if news or anyio.current_time() - started >= _HEALTHY_WATCH:
                failures = 0
                continue
            failures += 1
        except GoneError:
            log.info("%s: resourceVersion %s is too old, listing again", where, version)
            version = None
            failures += 1
            if failures == 1:
                continue  # routine after a long quiet spell: list again at once
        except KubeError as exc:
            failures += 1
            spent = retry.attempts is not None and failures >= retry.attempts
            if not _retryable(exc) or spent:
                raise
            log.warning("%s failed (%d in a row), retrying: %s", where, failures, exc)
        await anyio.sleep(retry.delay(failures))


async def follow_object(
    source: WatchSource,
    path: ResourcePath,
    name: str,
    *,
    retry: RetryPolicy = WATCH_RETRY,
    timeout_seconds: int = 300,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """The states of the object ``name``: its current one (None when absent), then each new
    one (None once deleted), until the caller stops iterating. It resumes and lists again as
    ``_follow`` does; a state is not repeated when a new list finds the object unchanged.
    """
    where = f"watch {path.item(name)}"
    shown: object = _UNSEEN  # the resourceVersion of the last state yielded; None: absent
    follow = _follow(source, path, f"metadata.name={name}", where, retry, timeout_seconds)
    async with aclosing(follow):
        async for news in follow:
            if isinstance(news, _Listed):
                named = [i for i in news.items if i.get("metadata", {}).get("name") == name]
                state = named[0] if named else None
            else:
                state = None if news.type == "DELETED" else news.object
            if resource_version_of(state) != shown:
                shown = resource_version_of(state)
                yield state


async def follow_collection(
    source: WatchSource,
    path: ResourcePath,
    *,
    field_selector: str | None = None,
    retry: RetryPolicy = WATCH_RETRY,
    timeout_seconds: int = 300,
    max_failures: int | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """Every object of a collection, then every change: a list answer's items come as ADDED
    events, then the watch's events, until the caller stops iterating. After a new list,
    objects may come again (handlers must be idempotent), and deletions that happened while
    no watch ran are not reported. ``max_failures``, if given, replaces ``retry.attempts``:
    that many failures in a row raise the last one.
    """
    where = f"watch {path.collection()}"
    if max_failures is not None:
        retry = replace(retry, attempts=max_failures)
    follow = _follow(source, path, field_selector, where, retry, timeout_seconds)
    async with aclosing(follow):
        async for news in follow:
            if isinstance(news, _Listed):
                for item in news.items:
                    yield WatchEvent("ADDED", item)
            else:
                yield news
