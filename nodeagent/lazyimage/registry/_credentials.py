"""Which credentials a registry request may use, and in which order.

Two kinds of credentials are kept apart:

- the node's own (a ``Keychain``, or the agent's ``--docker-config`` as a
  ``DockerConfigFile``): host-wide, as the node's admin gave them;
- granted ones: a named source (say, the pull secret ``ns/name`` that an order named) granted
  for one repository of one registry (the order's image). A grant serves that repository and
  no other, so several sources for one registry coexist, each for its own repositories.

For a request to ``registry/repository``, ``candidates`` lists what to try: the credentials
that last worked for that repository first; then the granted ones, in the order they were
first granted for it; then the node's. A candidate the registry refused goes after the others
until its credentials change. With none of these the request goes anonymously. A request
that names no repository (``/v2/``) gets only the node's credentials.

A granted source may come with ``reload``, which reads it again (``None``: it is gone). The
store reads it again when the registry refused a request it covers (``refresh``; at most once
per source per backoff window, the window doubling while the source stays the same) and on
``recheck``. A source read as gone is dropped at once. Every change bumps ``version``, which
tells a caller whether the credentials changed while its request was being refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from lazyimage.errors import LazyImageError
from lazyimage.registry._keychain import Credentials, DockerConfigFile, Keychain, registry_name

__all__ = ["ANONYMOUS", "NODE", "Candidate", "CredentialStore", "Reload"]

log = logging.getLogger("lazyimage.registry")

NODE = "node"
# Reads a granted source again: its keychain now, or None when it no longer exists.
Reload = Callable[[], Awaitable[Keychain | None]]
# Bounds the per-repository memory of what worked and what was refused.
_MEMORY = 4096


@dataclass(frozen=True)
class Candidate:
    """Credentials to try, and the source they come from (for logs and errors)."""

    source: str
    credentials: Credentials | None


ANONYMOUS = Candidate("anonymous", None)


@dataclass(eq=False)
class _Source:
    name: str
    keychain: Keychain
    reload: Reload | None
    # (registry, repository) pairs it was granted for.
    scopes: list[tuple[str, str]] = field(default_factory=list)
    retry_at: float = 0.0  # a refusal may read it again from then on
    backoff: float = 0.0
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class CredentialStore:
    """The node's credentials and the sources granted per repository; see the module doc.

    ``backoff`` is the first and the longest pause between two reads of one source that a
    refusal triggers.
    """

    def __init__(
        self,
        node: Keychain | DockerConfigFile | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self._node = node if node is not None else Keychain()
        self._clock = clock
        self._backoff = backoff
        self._sources: dict[str, _Source] = {}
        self._scopes: dict[tuple[str, str], list[str]] = {}
        self._worked: dict[tuple[str, str], Candidate] = {}
        self._refused: dict[tuple[str, str, Candidate], None] = {}
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def sources(self) -> list[str]:
        """The granted sources, by name."""
        return list(self._sources)

    def scopes(self, source: str) -> list[tuple[str, str]]:
        """The (registry, repository) pairs ``source`` was granted for."""
        found = self._sources.get(source)
        return list(found.scopes) if found is not None else []

    def node_keychain(self) -> Keychain:
        return self._node.keychain() if isinstance(self._node, DockerConfigFile) else self._node

    # -- grants ------------------------------------------------------------------------------

    def grant(
        self,
        source: str,
        keychain: Keychain,
        registry: str,
        repository: str,
        reload: Reload | None = None,
    ) -> None:
        """Let ``source``'s credentials serve ``registry/repository`` (and keep serving the
        repositories it was granted for before). ``keychain`` is the source as just read."""
        scope = (registry_name(registry), repository)
        found = self._sources.get(source)
        if found is None:
            found = self._sources[source] = _Source(source, keychain, reload)
            self._bump()
        else:
            if reload is not None:
                found.reload = reload
            self._update(found, keychain)
        if scope not in found.scopes:
            found.scopes.append(scope)
            self._scopes.setdefault(scope, []).append(source)
            self._bump()

    def revoke(self, source: str) -> None:
        """Forget ``source`` and every grant it had."""
        found = self._sources.pop(source, None)
        if found is None:
            return
        for scope in found.scopes:
            names = self._scopes.get(scope, [])
            if source in names:
                names.remove(source)
            if not names:
                self._scopes.pop(scope, None)
            if (worked := self._worked.get(scope)) is not None and worked.source == source:
                del self._worked[scope]
        self._refused = {key: None for key in self._refused if key[2].source != source}
        self._bump()
        log.info("credentials of %s dropped", source)

    def _update(self, found: _Source, keychain: Keychain) -> bool:
        if keychain == found.keychain:
            return False
        found.keychain = keychain
        found.retry_at, found.backoff = 0.0, 0.0
        self._bump()
        log.info("credentials of %s changed", found.name)
        return True

    def _bump(self) -> None:
        self._version += 1

    # -- lookups -----------------------------------------------------------------------------

    def candidates(self, host: str, repository: str | None) -> list[Candidate]:
        """What a request to ``host`` for ``repository`` may try, in order (never empty)."""
        registry = registry_name(host)
        found: list[Candidate] = []
        if repository is not None:
            for name in self._scopes.get((registry, repository), ()):
                creds = self._sources[name].keychain.lookup(registry, repository)
                if creds is not None:
                    found.append(Candidate(name, creds))
        node = self.node_keychain().lookup(registry, repository)
        if node is not None:
            found.append(Candidate(NODE, node))
        if not found:
            return [ANONYMOUS]
        if repository is None:
            return found
        scope = (registry, repository)
        worked = self._worked.get(scope)
        first = [c for c in found if c == worked]
        refused = [c for c in found if c != worked and (*scope, c) in self._refused]
        return first + [c for c in found if c not in first and c not in refused] + refused

    def worked(self, host: str, repository: str | None, candidate: Candidate) -> None:
        if repository is None or candidate.credentials is None:
            return
        scope = (registry_name(host), repository)
        if self._worked.get(scope) == candidate:
            return
        if len(self._worked) >= _MEMORY:
            self._worked.clear()
        self._worked[scope] = candidate
        self._refused.pop((*scope, candidate), None)

    def refused(self, host: str, repository: str | None, candidate: Candidate) -> None:
        if repository is None or candidate.credentials is None:
            return
        scope = (registry_name(host), repository)
        if self._worked.get(scope) == candidate:
            del self._worked[scope]
        if len(self._refused) >= _MEMORY:
            self._refused.clear()
        self._refused[(*scope, candidate)] = None

    def describe(self, host: str, repository: str | None) -> str:
        """The sources a request to ``host/repository`` would try, for an error message."""
        names = [c.source for c in self.candidates(host, repository) if c.credentials]
        return ", ".join(names)

    # -- reading sources again ---------------------------------------------------------------

    async def refresh(self, host: str, repository: str | None, since: int) -> bool:
        """The registry refused a request made with the credentials of ``version`` ``since``:
        read its sources again (those whose backoff allows it). True if the credentials
        changed since then, so that the request is worth another try."""
        if self._version != since:
            return True
        if isinstance(self._node, DockerConfigFile) and self._node.reload():
            self._bump()
        if repository is not None:
            scope = (registry_name(host), repository)
            for name in list(self._scopes.get(scope, ())):
                found = self._sources.get(name)
                if found is None or found.reload is None or self._clock() < found.retry_at:
                    continue
                await self._reread(found, since)
        return self._version != since

    async def recheck(self) -> None:
        """Read every source that can be read again, once (the periodic check that notices a
        deleted or changed source nobody was refused with)."""
        for found in list(self._sources.values()):
            if found.reload is not None:
                await self._reread(found, None)

    async def _reread(self, found: _Source, since: int | None) -> None:
        async with found.lock:
            if self._sources.get(found.name) is not found:
                return  # revoked while this waited
            if since is not None and (self._version != since or self._clock() < found.retry_at):
                return  # another request read it again meanwhile
            assert found.reload is not None
            try:
                keychain = await found.reload()
            except (LazyImageError, OSError) as exc:
                # The source may be out of reach for a while: keep what it had.
                log.warning("cannot read %s again, kept: %s", found.name, exc)
                self._back_off(found)
                return
            except Exception:
                # A bug in a reader must not fail the reads it was asked to help.
                log.exception("reading %s again failed, kept", found.name)
                self._back_off(found)
                return
            if keychain is None:
                self.revoke(found.name)
            elif not self._update(found, keychain):
                self._back_off(found)

    def _back_off(self, found: _Source) -> None:
        first, longest = self._backoff
        found.backoff = min(max(found.backoff * 2, first), longest)
        found.retry_at = self._clock() + found.backoff
