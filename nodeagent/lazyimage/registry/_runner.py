"""Running an operation: which hosts, how many attempts, when to give up.

An operation is a function that makes one attempt on one endpoint. ``Runner.pull`` runs a
read-only one on each host that may do it, in order: once on each mirror, then on the
registry's server with retries under the RetryPolicy. ``Runner.push`` runs a write on the first
host that may push. Between attempts it backs off; it reads refused credentials again once,
resends a one-shot body once after authenticating, and switches a host to plain http when it
answers a TLS handshake in plain http (only a hosts.toml ``http://`` host with TLS settings).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import httpx

from lazyimage.errors import AuthError, PlainHTTPError, RegistryError, TLSError, UnavailableError
from lazyimage.registry._auth import ReplayRequired
from lazyimage.registry._connection import Connection
from lazyimage.registry._errors import Fatal, Op, Retryable, describe
from lazyimage.registry._hostsfile import Capability
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._tls import certificate_refusal
from lazyimage.retry import RetryPolicy, RetryState

__all__ = ["Attempt", "Runner"]

log = logging.getLogger("lazyimage.registry")

T = TypeVar("T")
# One try of an operation on one host.
Attempt = Callable[[Endpoint], Awaitable[T]]


def _op_at(op: Op, endpoint: Endpoint) -> Op:
    """``op`` as done on ``endpoint``: another host than the registry is named in errors."""
    return op if endpoint.mirror_of is None else Op(endpoint.host, op.repository, op.what)


class Runner:
    """Runs operations over ``connection`` under ``policy``."""

    def __init__(self, connection: Connection, policy: RetryPolicy) -> None:
        self.connection = connection
        self.policy = policy

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: RetryPolicy) -> None:
        # An operation's cost is bounded by its policy: a registry call must give up.
        if not policy.bounded:
            raise ValueError("a registry RetryPolicy needs a limit of attempts and a total_timeout")
        self._policy = policy

    async def pull(
        self,
        ref: Reference,
        op: Op,
        attempt: Attempt[T],
        *,
        bounded: bool,
        need: Capability = Capability.PULL,
        on_retry: Callable[[str], None] | None = None,
    ) -> T:
        """Run a read-only operation on each host that may do it, in order: once on each but
        the last (the mirrors), then on the last with retries."""
        route = await self.connection.router.route(ref.registry)
        endpoints = [endpoint for endpoint in route.endpoints if need in endpoint.capabilities]
        if not endpoints:
            what = (need.name or "").lower()
            raise op.error(RegistryError, f"no host of the registry may {what}{route.source}")
        *mirrors, last = endpoints
        once = RetryPolicy(attempts=1, total_timeout=self.policy.total_timeout)
        for endpoint in mirrors:
            try:
                return await self._retrying(
                    _op_at(op, endpoint), endpoint, attempt, once, bounded=bounded
                )
            except RegistryError as exc:
                log.info("mirror %s failed, trying the next host: %s", endpoint.host, exc)
        return await self._retrying(
            _op_at(op, last), last, attempt, self.policy, bounded=bounded, on_retry=on_retry
        )

    async def push(self, ref: Reference, op: Op, attempt: Attempt[T], *, bounded: bool) -> T:
        """Run a write (or the check before one) on the first host that may push."""
        route = await self.connection.router.route(ref.registry)
        for endpoint in route.endpoints:
            if Capability.PUSH in endpoint.capabilities:
                return await self._retrying(
                    _op_at(op, endpoint), endpoint, attempt, self.policy, bounded=bounded
                )
        raise op.error(RegistryError, f"no host of the registry may push{route.source}")

    async def _retrying(
        self,
        op: Op,
        endpoint: Endpoint,
        attempt: Attempt[T],
        policy: RetryPolicy,
        *,
        bounded: bool,
        on_retry: Callable[[str], None] | None = None,
    ) -> T:
        """Attempts under ``policy``. With ``bounded`` the whole operation is also cut off at
        ``total_timeout``; without (whole-blob transfers, whose time grows with their size)
        only new attempts stop then."""
        connection = self.connection
        # The event loop's clock, the one the deadline and the backoff sleeps use.
        state = RetryState(policy, clock=anyio.current_time)
        cause = "none"
        last: BaseException | None = None
        replayed = refreshed = False
        with anyio.move_on_after(policy.total_timeout if bounded else None) as deadline:
            while True:
                version = connection.credentials.version
                try:
                    return await attempt(endpoint)
                except AuthError:
                    # Refused with every candidate: their sources may have changed (a rotated
                    # or deleted secret, a rewritten docker config). Read them again, once.
                    if refreshed or not await self._refresh(endpoint, op, version):
                        raise
                    refreshed = True
                    continue
                except ReplayRequired:
                    # Credentials were just fetched for a one-shot body; resend it once.
                    if replayed:
                        raise op.error(AuthError, "challenged again after authenticating") from None
                    replayed = True
                    continue
                except Fatal as exc:
                    raise op.error(RegistryError, str(exc)) from None
                except Retryable as exc:
                    cause, retry_after, last = exc.cause, exc.retry_after, exc
                # httpcore passes a TLS alert received while reading on as the SSLError itself.
                except (httpx.TransportError, ssl.SSLError) as exc:
                    refusal = certificate_refusal(endpoint.host, exc)
                    if refusal is not None:
                        raise op.error(TLSError, refusal) from exc
                    if await connection.speaks_plain_http(endpoint, exc):
                        if endpoint.plain_fallback:
                            endpoint = connection.router.plain_http(endpoint)
                            continue
                        raise op.error(
                            PlainHTTPError,
                            f"{endpoint.host} speaks plain http, not https; "
                            f"pass --insecure-registry {endpoint.host}",
                        ) from exc
                    cause, retry_after, last = describe(exc), None, exc
                except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                    raise op.error(RegistryError, describe(exc)) from exc
                delay = state.next_delay(retry_after)
                if delay is None:
                    break
                if on_retry is not None:
                    on_retry(cause)
                log.debug(
                    "%s: attempt %d failed (%s); retrying in %.2f s",
                    op.what,
                    state.attempt - 1,
                    cause,
                    delay,
                )
                await anyio.sleep(delay)
        attempts = state.attempt
        if deadline.cancelled_caught:
            cause = f"no answer within {policy.total_timeout:g} s; last failure: {cause}"
        raise op.error(
            UnavailableError,
            f"{cause} (gave up after {attempts} attempt{'s' if attempts > 1 else ''} "
            f"in {state.elapsed:.1f} s)",
        ) from last

    async def _refresh(self, endpoint: Endpoint, op: Op, version: int) -> bool:
        credentials = self.connection.credentials
        changed = await credentials.refresh(endpoint.host, op.repository or None, version)
        if changed:
            log.info("credentials for %s/%s changed; trying again", endpoint.host, op.repository)
        return changed
