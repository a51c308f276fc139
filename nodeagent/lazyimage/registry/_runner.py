"""Running an operation: which hosts, how many attempts, when to give up.

An operation is a function that makes one attempt on one endpoint. ``Runner.pull`` runs a
read-only one on each host that may do it, in order: once on each mirror, then on the
registry's server with retries under the RetryPolicy. ``Runner.push`` runs a write on the first
host that may push. Between attempts it backs off; it reads refused credentials again once,
resends a one-shot body once after authenticating, and switches a host to plain http when it
answers a TLS handshake in plain http (only a hosts.toml ``http://`` host with TLS settings).

A pull may also have a caller's ``deadline`` (on anyio's clock): no attempt starts after it,
the attempt in flight is cancelled at it, and the call then fails as when its retries are
spent (UnavailableError), naming the last failure and the attempts made. ``CallBound`` says
what a call may cost.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import httpx

from lazyimage.errors import AuthError, PlainHTTPError, RegistryError, TLSError, UnavailableError
from lazyimage.registry._auth import ReplayRequired
from lazyimage.registry._connection import CLOSE_TIMEOUT, Connection
from lazyimage.registry._errors import Fatal, Op, Retryable, describe
from lazyimage.registry._hostsfile import Capability
from lazyimage.registry._reference import Reference
from lazyimage.registry._routes import Endpoint
from lazyimage.registry._tls import certificate_refusal
from lazyimage.retry import RetryPolicy, RetryState

__all__ = ["Attempt", "CallBound", "Runner"]

log = logging.getLogger("lazyimage.registry")

T = TypeVar("T")
# One try of an operation on one host.
Attempt = Callable[[Endpoint], Awaitable[T]]


# Attempts a host may take beyond its policy's: one after its refused credentials were read
# again and changed, one in plain http after it answered a TLS handshake in plain http.
_EXTRA_ATTEMPTS_PER_HOST = 2


@dataclass(frozen=True)
class CallBound:
    """What one pull call (a ``read_range``) may cost, whatever its hosts do.

    An attempt is one try of the operation on one host. A call makes at most ``attempts``
    (the policy's) on the registry's server, and before them one on each mirror; any host
    may take one more after its refused credentials were read again and changed, and one
    more in plain http after answering a TLS handshake in plain http (only an ``http://``
    host of hosts.toml with TLS settings). ``most_attempts`` adds these up.

    Requests: an attempt sends one request to its host, plus those of the auth exchange when
    no cached token serves (per credential candidate, a token request and the resend), plus
    each redirect it follows (at most 5); a range read whose blob redirected before first
    sends one request to the remembered target (and its redirects), and asks the host only if
    that target refuses. Token and redirect requests are not attempts: a failure among them
    fails the attempt.

    Time: a call with a deadline returns (data or an error) no later than ``margin`` seconds
    after it: cancelling the attempt in flight only waits for its response to close, and
    that closing is cut off after ``margin``. Without a deadline, each host's attempts are cut
    off ``total_timeout`` after its first.
    """

    attempts: int
    margin: float = CLOSE_TIMEOUT

    def most_attempts(self, mirrors: int = 0) -> int:
        """The most attempts of a call to a registry with ``mirrors`` mirrors."""
        hosts = mirrors + 1
        return self.attempts + mirrors + hosts * _EXTRA_ATTEMPTS_PER_HOST


class _Tally:
    """The attempts of one call, across its hosts, and its last failure."""

    def __init__(self) -> None:
        self.started = anyio.current_time()
        self.attempts = 0
        self.in_flight = False
        self.cause = "none"
        self.raised: RegistryError | None = None  # the deadline's error, once made

    def past_deadline(self, op: Op, last: BaseException | None = None) -> RegistryError:
        if self.in_flight:
            when = f"deadline reached during attempt {self.attempts}"
        else:
            when = f"deadline reached before attempt {self.attempts + 1} could start"
        count = self.attempts
        elapsed = anyio.current_time() - self.started
        error = op.error(
            UnavailableError,
            f"{when}; last failure: {self.cause} (gave up after {count} "
            f"attempt{'' if count == 1 else 's'} in {elapsed:.1f} s)",
        )
        error.__cause__ = last
        self.raised = error
        return error


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
        deadline: float | None = None,
    ) -> T:
        """Run a read-only operation on each host that may do it, in order: once on each but
        the last (the mirrors), then on the last with retries; all before ``deadline``."""
        tally = _Tally()
        with anyio.move_on_at(math.inf if deadline is None else deadline):
            return await self._pull(ref, op, attempt, bounded, need, on_retry, deadline, tally)
        # Only a deadline ends the block without a return or an error.
        raise tally.past_deadline(op)

    @property
    def bound(self) -> CallBound:
        """What one pull call may cost under the current policy."""
        assert self.policy.attempts is not None  # a registry policy is bounded
        return CallBound(self.policy.attempts)

    async def _pull(
        self,
        ref: Reference,
        op: Op,
        attempt: Attempt[T],
        bounded: bool,
        need: Capability,
        on_retry: Callable[[str], None] | None,
        deadline: float | None,
        tally: _Tally,
    ) -> T:
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
                    _op_at(op, endpoint), endpoint, attempt, once, bounded, None, deadline, tally
                )
            except RegistryError as exc:
                if exc is tally.raised:
                    raise
                tally.cause = str(exc)
                if deadline is not None and anyio.current_time() >= deadline:
                    raise tally.past_deadline(op, exc) from exc
                log.info("mirror %s failed, trying the next host: %s", endpoint.host, exc)
        return await self._retrying(
            _op_at(op, last), last, attempt, self.policy, bounded, on_retry, deadline, tally
        )

    async def push(self, ref: Reference, op: Op, attempt: Attempt[T], *, bounded: bool) -> T:
        """Run a write (or the check before one) on the first host that may push."""
        route = await self.connection.router.route(ref.registry)
        for endpoint in route.endpoints:
            if Capability.PUSH in endpoint.capabilities:
                return await self._retrying(
                    _op_at(op, endpoint), endpoint, attempt, self.policy, bounded
                )
        raise op.error(RegistryError, f"no host of the registry may push{route.source}")

    async def _retrying(
        self,
        op: Op,
        endpoint: Endpoint,
        attempt: Attempt[T],
        policy: RetryPolicy,
        bounded: bool,
        on_retry: Callable[[str], None] | None = None,
        deadline: float | None = None,
        tally: _Tally | None = None,
    ) -> T:
        """Attempts under ``policy``, none started after ``deadline``. With ``bounded`` the
        whole operation is also cut off at ``total_timeout``; without (whole-blob transfers,
        whose time grows with their size) only new attempts stop then."""
        connection = self.connection
        tally = tally if tally is not None else _Tally()
        # The event loop's clock, the one the deadline and the backoff sleeps use.
        state = RetryState(policy, clock=anyio.current_time, deadline=deadline)
        cause = "none"
        last: BaseException | None = None
        replayed = refreshed = False
        with anyio.move_on_after(policy.total_timeout if bounded else None) as timeout:
            while True:
                if deadline is not None and anyio.current_time() >= deadline:
                    raise tally.past_deadline(op, last)
                version = connection.credentials.version
                tally.attempts += 1
                tally.in_flight = True
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
                tally.in_flight = False
                tally.cause = cause
                delay = state.next_delay(retry_after)
                if delay is None:
                    if state.past_deadline:
                        raise tally.past_deadline(op, last)
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
        if timeout.cancelled_caught:
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
