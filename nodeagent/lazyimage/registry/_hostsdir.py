"""A containerd ``config_path`` directory (``/etc/containerd/certs.d``): which hosts serve each
registry, and with what TLS settings, read again when its files change.

For a registry ``NAME`` (``docker.io``, ``host:port``), the first of these directories that
exists applies, as containerd picks it: ``host_port_`` (for a name with a port), ``NAME``,
``_default``. In it, a ``hosts.toml`` lists the hosts (lazyimage.registry._hostsfile); without
one (or with an empty one), the Docker layout applies: each ``*.crt`` is a CA to trust and each
``*.cert`` a client certificate, with its key in the ``*.key`` of the same name if there is one.

A file that cannot be used raises ConfigError with ``strict``; otherwise it is logged, once per
change, and skipped as containerd skips it: a bad ``hosts.toml`` gives way to the certificate
files beside it, and bad certificate files to no settings at all.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lazyimage import names
from lazyimage.errors import ConfigError
from lazyimage.registry._hostsfile import (
    Capability,
    HostsConfig,
    RegistryHost,
    TLSSettings,
    parse_hosts_file,
)
from lazyimage.registry._tls import ssl_context

__all__ = ["HOSTS_FILE", "LoadedHost", "LoadedHosts", "RegistryHosts", "host_directories"]

log = logging.getLogger("lazyimage.registry")

HOSTS_FILE = "hosts.toml"
_DEFAULT = "_default"

# What a file looked like when it was read: (mtime, size, inode), or None if it was missing.
_Stamp = tuple[int, int, int] | None


def host_directories(registry: str) -> list[str]:
    """The directory names that may hold ``registry``'s settings, in the order they apply."""
    names = []
    host, colon, port = registry.rpartition(":")
    if colon and host and port.isdigit():
        names.append(f"{host}_{port}_")
    return [*names, registry, _DEFAULT]


@dataclass(frozen=True)
class LoadedHost:
    """A host with its TLS settings loaded; ``ssl_context`` None: the client's default."""

    host: RegistryHost
    ssl_context: ssl.SSLContext | None


@dataclass(frozen=True, eq=False)
class LoadedHosts:
    """One registry's hosts, ready to use. The same object is handed out until the files it
    came from change, so a user may keep what it built from it until then."""

    source: Path
    hosts: tuple[LoadedHost, ...]


@dataclass(frozen=True)
class _Entry:
    directory: Path | None
    stamps: tuple[tuple[Path, _Stamp], ...]
    loaded: LoadedHosts | None


def _stamp(path: Path) -> _Stamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _stamps(paths: Iterable[Path]) -> tuple[tuple[Path, _Stamp], ...]:
    return tuple((path, _stamp(path)) for path in paths)


def _certificate_files(directory: Path) -> HostsConfig:
    """The Docker layout: ``*.crt`` CAs, ``*.cert`` client certificates with their ``*.key``."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if not entry.is_dir())
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    ca = tuple(directory / name for name in names if name.endswith(".crt"))
    pairs: list[tuple[Path, Path | None]] = []
    for name in names:
        if name.endswith(".cert"):
            key = f"{name.removesuffix('.cert')}.key"
            pairs.append((directory / name, directory / key if key in names else None))
    tls = TLSSettings(ca_files=ca, client_pairs=tuple(pairs))
    return HostsConfig((RegistryHost(None, tls=tls),), directory)


def _capabilities(capabilities: Capability) -> str:
    return ", ".join(c.name.lower() for c in Capability if c in capabilities and c.name)


def _describe(config: HostsConfig) -> str:
    shown = []
    for host in config.hosts:
        url = host.url
        where = "the registry" if url is None else url.netloc
        if url is not None and url.scheme:
            where = f"{url.scheme}://{url.netloc}"
        shown.append(f"{where} ({_capabilities(host.capabilities)})")
    return ", then ".join(shown)


class RegistryHosts:
    """The per-registry settings under ``root``; ``lookup`` is safe from several threads.

    A client looks its registries up again ``recheck`` seconds after it last did, so a
    change to the files applies within that long, as containerd applies it without a restart.
    """

    def __init__(self, root: Path, *, strict: bool = False, recheck: float = 5.0) -> None:
        self.root = root
        self.strict = strict
        self.recheck = recheck
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"RegistryHosts({str(self.root)!r})"

    @staticmethod
    def containerd_default() -> Path | None:
        """containerd's usual directory (/etc/containerd/certs.d), if this machine has it."""
        path = Path(names.DEFAULT_REGISTRY_CONFIG)
        return path if path.is_dir() else None

    def _directory(self, registry: str) -> Path | None:
        for name in host_directories(registry):
            candidate = self.root / name
            if candidate.is_dir():
                return candidate
        return None

    def lookup(self, registry: str) -> LoadedHosts | None:
        """``registry``'s hosts, or None when no directory applies (the registry alone, with
        the client's defaults). Blocks on file reads: call it off the event loop."""
        with self._lock:
            directory = self._directory(registry)
            entry = self._entries.get(registry)
            if (
                entry is not None
                and entry.directory == directory
                and _stamps(path for path, _ in entry.stamps) == entry.stamps
            ):
                return entry.loaded
            entry = self._load(registry, directory) if directory else _Entry(None, (), None)
            self._entries[registry] = entry
            return entry.loaded

    def _load(self, registry: str, directory: Path) -> _Entry:
        hosts_file = directory / HOSTS_FILE
        # Stamped before reading, so that a change made while it is read is seen next time.
        stamps = list(_stamps([directory, hosts_file]))
        instead = f"using the certificate files in {directory}"
        loaded = None
        try:
            data = hosts_file.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            self._skip(ConfigError(f"{hosts_file}: cannot read: {exc.strerror or exc}"), instead)
            data = b""
        if data:
            loaded = self._ready(
                registry, lambda: parse_hosts_file(data, hosts_file), stamps, instead
            )
        if loaded is None:
            nothing = f"{registry} gets no settings from {directory}"
            loaded = self._ready(registry, lambda: _certificate_files(directory), stamps, nothing)
        return _Entry(directory, tuple(stamps), loaded)

    def _ready(
        self,
        registry: str,
        read: Callable[[], HostsConfig],
        stamps: list[tuple[Path, _Stamp]],
        instead: str,
    ) -> LoadedHosts | None:
        """The hosts ``read`` gives, with their TLS settings loaded; None if they cannot be
        (raised with ``strict``, else logged with what is done ``instead``). The files they
        name are added to ``stamps``."""
        try:
            config = read()
            stamps.extend(_stamps(config.files))
            loaded = _loaded(config)
        except ConfigError as exc:
            self._skip(exc, instead)
            return None
        log.info("registry %s: hosts from %s: %s", registry, config.source, _describe(config))
        return loaded

    def _skip(self, error: ConfigError, instead: str) -> None:
        if self.strict:
            raise error
        log.error("%s; %s", error, instead)


def _loaded(config: HostsConfig) -> LoadedHosts:
    hosts = []
    # Hosts with the same settings share a context, hence a client and its connections.
    contexts: dict[TLSSettings, ssl.SSLContext] = {}
    for host in config.hosts:
        context = None
        if host.tls.configured:
            context = contexts.get(host.tls)
            if context is None:
                prefix = f"{host.table}." if host.table else ""
                context = ssl_context(host.tls, f"{config.source}: {prefix}")
                contexts[host.tls] = context
        hosts.append(LoadedHost(host, context))
    return LoadedHosts(config.source, tuple(hosts))
