"""Which hosts serve a registry, in the order they are tried, and how to reach each.

A registry's route is the client's ``mirrors`` for it (pull and resolve only), then the hosts
its certs.d directory names (lazyimage.registry._hostsdir), the last of them its server; with
no directory, the registry itself. Each host that has TLS settings or a connect timeout of its
own gets an httpx client of its own; the rest share the client's.

As in containerd, an ``http://`` host that has TLS settings, on another port than 80, is tried
in https first, and spoken to in plain http once it answers in plain http.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import anyio
import httpx

from lazyimage.registry._hostsdir import LoadedHost, LoadedHosts, RegistryHosts
from lazyimage.registry._hostsfile import ALL_CAPABILITIES, Capability
from lazyimage.registry._reference import connect_host

__all__ = ["Endpoint", "Route", "Router"]

_MIRROR_CAPABILITIES = Capability.PULL | Capability.RESOLVE

# Makes an httpx client like the shared one, with this timeout and TLS verification.
NewClient = Callable[[httpx.Timeout, "ssl.SSLContext | bool"], httpx.AsyncClient]


@dataclass(frozen=True)
class Endpoint:
    """A host that serves a registry's API: the registry itself, one of its mirrors, or the
    server its hosts.toml names."""

    base: httpx.URL
    # The upstream registry name, sent to other hosts as ``?ns=`` (what containerd does).
    mirror_of: str | None = None
    root: str = "/v2"  # the API root path
    capabilities: Capability = ALL_CAPABILITIES
    headers: tuple[tuple[str, str], ...] = ()
    # The client with this host's TLS settings and connect timeout; None: the shared one.
    http: httpx.AsyncClient | None = field(default=None, compare=False)
    # Written http:// but tried in https: plain http once the host answers in it.
    plain_fallback: bool = False

    @property
    def host(self) -> str:
        return self.base.netloc.decode("ascii")


@dataclass(frozen=True)
class Route:
    """The hosts of one registry, in the order they are tried, and where they came from."""

    endpoints: tuple[Endpoint, ...]
    loaded: LoadedHosts | None
    checked: float  # when the hosts' files were last looked at (the event loop's clock)

    @property
    def source(self) -> str:
        return f" (hosts from {self.loaded.source})" if self.loaded is not None else ""


class Router:
    """Routes for a client. ``new_client`` None: every host shares the client's (a test
    transport stands for the network, so TLS settings mean nothing)."""

    def __init__(
        self,
        *,
        insecure: Sequence[str],
        mirrors: Mapping[str, Sequence[str]],
        hosts: RegistryHosts | None,
        timeout: httpx.Timeout,
        new_client: NewClient | None,
    ) -> None:
        self._insecure = frozenset(insecure)
        self._mirrors = {name: tuple(locations) for name, locations in mirrors.items()}
        self._hosts = hosts
        self._timeout = timeout
        self._new_client = new_client
        # One client per TLS setting and connect timeout that a host's hosts.toml asks for.
        # Those of settings since replaced are kept until aclose: requests may still use them.
        self._clients: dict[tuple[ssl.SSLContext | None, float | None], httpx.AsyncClient] = {}
        self._routes: dict[str, Route] = {}
        self._plain: set[str] = set()  # hosts of plain_fallback found to speak plain http

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def route(self, registry: str) -> Route:
        """The registry's hosts; their files are looked at again every ``recheck`` seconds."""
        route = self._routes.get(registry)
        now = anyio.current_time()
        if route is not None and (self._hosts is None or now - route.checked < self._hosts.recheck):
            return route
        loaded = None
        if self._hosts is not None:
            # A caller's deadline does not wait for the files: the thread is left to finish.
            loaded = await anyio.to_thread.run_sync(
                self._hosts.lookup, registry, abandon_on_cancel=True
            )
        if route is not None and route.loaded is loaded:
            route = replace(route, checked=now)
        else:
            route = self._build(registry, loaded, now)
        self._routes[registry] = route
        return route

    def plain_http(self, endpoint: Endpoint) -> Endpoint:
        """A ``plain_fallback`` endpoint found to speak plain http: from now on it is."""
        self._plain.add(endpoint.host)
        for registry, route in self._routes.items():
            self._routes[registry] = self._build(registry, route.loaded, route.checked)
        return replace(endpoint, base=endpoint.base.copy_with(scheme="http"), plain_fallback=False)

    def _build(self, registry: str, loaded: LoadedHosts | None, checked: float) -> Route:
        mirrors = [self._mirror(m, registry) for m in self._mirrors.get(registry, ())]
        if loaded is None:
            hosts = [Endpoint(self._registry_base(registry))]
        else:
            hosts = [self._configured(registry, host) for host in loaded.hosts]
        return Route((*mirrors, *hosts), loaded, checked)

    def _scheme(self, host: str) -> str:
        return "http" if host in self._insecure else "https"

    def _mirror(self, location: str, registry: str) -> Endpoint:
        """A host given to the client as ``mirrors``: it may pull and resolve tags."""
        if "://" in location:
            url = httpx.URL(location)
            base = httpx.URL(scheme=url.scheme, host=url.host, port=url.port)
        else:
            base = httpx.URL(f"{self._scheme(location)}://{location}")
        return Endpoint(base, registry, capabilities=_MIRROR_CAPABILITIES)

    def _registry_base(self, registry: str) -> httpx.URL:
        host = connect_host(registry)
        scheme = "http" if registry in self._insecure else self._scheme(host)
        return httpx.URL(f"{scheme}://{host}")

    def _configured(self, registry: str, loaded: LoadedHost) -> Endpoint:
        """A host from the registry's hosts.toml (or certificate files)."""
        host = loaded.host
        if host.url is None:
            base, root, mirror_of = self._registry_base(registry), "/v2", None
        else:
            netloc = host.url.netloc
            base = httpx.URL(f"{host.url.scheme or self._scheme(netloc)}://{netloc}")
            root = host.url.root
            # Another host than the registry's own is told which registry is meant.
            own = netloc in (registry, connect_host(registry))
            mirror_of = None if own else registry
        fallback = (
            host.url is not None
            and host.url.scheme == "http"
            and loaded.ssl_context is not None
            and not host.url.netloc.endswith(":80")  # http's own port says plain http
            and host.url.netloc not in self._plain
        )
        if fallback:
            base = base.copy_with(scheme="https")
        context = loaded.ssl_context if base.scheme == "https" else None
        return Endpoint(
            base,
            mirror_of,
            root,
            host.capabilities,
            host.headers,
            self._client(context, host.dial_timeout),
            fallback,
        )

    def _client(
        self, context: ssl.SSLContext | None, dial_timeout: float | None
    ) -> httpx.AsyncClient | None:
        if (context is None and dial_timeout is None) or self._new_client is None:
            return None
        key = (context, dial_timeout)
        client = self._clients.get(key)
        if client is None:
            timeout = self._timeout
            if dial_timeout is not None:
                timeout = httpx.Timeout(
                    connect=dial_timeout, read=timeout.read, write=timeout.write, pool=timeout.pool
                )
            verify = context if context is not None else True
            client = self._clients[key] = self._new_client(timeout, verify)
        return client
