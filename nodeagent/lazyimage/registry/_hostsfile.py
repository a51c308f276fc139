"""containerd's per-registry ``hosts.toml``, parsed into typed settings (bytes in, no I/O).

A registry's ``hosts.toml`` lists the hosts that serve it, in the order they are tried: each
``[host."URL"]`` table first, in file order, then the ``server`` (the registry itself when
unset), whose settings are the file's top-level keys. Each host has:

- ``capabilities``: what it may be asked, of ``pull`` (blobs, manifests by digest),
  ``resolve`` (a tag to a digest, which a mirror must be trusted for) and ``push``; all three
  when unset.
- ``ca``: a file or a list of files of CA certificates to trust besides the usual ones.
- ``client``: a client certificate: a file with both certificate and key, a list of them, or a
  list of ``[cert, key]`` pairs.
- ``skip_verify``: do not verify the host's certificate.
- ``header``: extra request headers, each a string or a list of strings.
- ``override_path``: the URL's path is the API root as is (no ``/v2`` added).
- ``dial_timeout``: a Go duration (``"500ms"``, ``"1s"``) bounding each connect.

Relative paths are relative to the directory of the ``hosts.toml``. Keys this reader does not
know are ignored, as containerd ignores them. A value of the wrong type, an unknown capability,
a URL that is not http(s), or a file that is not TOML raises ConfigError naming the file and
the key.
"""

from __future__ import annotations

import enum
import posixpath
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyimage.errors import ConfigError

__all__ = [
    "ALL_CAPABILITIES",
    "Capability",
    "HostURL",
    "HostsConfig",
    "RegistryHost",
    "TLSSettings",
    "parse_hosts_file",
]


class Capability(enum.Flag):
    """What a host may be asked for."""

    PULL = enum.auto()
    RESOLVE = enum.auto()
    PUSH = enum.auto()


ALL_CAPABILITIES = Capability.PULL | Capability.RESOLVE | Capability.PUSH
_CAPABILITY_NAMES = {
    "pull": Capability.PULL,
    "resolve": Capability.RESOLVE,
    "push": Capability.PUSH,
}


@dataclass(frozen=True)
class TLSSettings:
    """A host's own TLS settings; the default (nothing set) is the client's usual verification."""

    ca_files: tuple[Path, ...] = ()
    # (certificate, key); the key None when the certificate file holds it too.
    client_pairs: tuple[tuple[Path, Path | None], ...] = ()
    skip_verify: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.ca_files or self.client_pairs or self.skip_verify)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file these settings read."""
        keys = tuple(key for _, key in self.client_pairs if key is not None)
        return self.ca_files + tuple(cert for cert, _ in self.client_pairs) + keys


@dataclass(frozen=True)
class HostURL:
    """Where a host is: ``scheme`` None when the file gave none (https, unless the client
    is told the host speaks plain http); ``root`` is the API root path (``/v2`` by default)."""

    scheme: str | None
    netloc: str
    root: str


@dataclass(frozen=True)
class RegistryHost:
    """One host that serves a registry's API: a mirror, or the server (``url`` None: the
    registry itself)."""

    url: HostURL | None
    capabilities: Capability = ALL_CAPABILITIES
    tls: TLSSettings = TLSSettings()
    headers: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None  # seconds
    # The TOML table it came from (``host."https://mirror"``; "" for the top level), for errors.
    table: str = ""


@dataclass(frozen=True)
class HostsConfig:
    """One registry's hosts, in the order they are tried; the last is the server."""

    hosts: tuple[RegistryHost, ...]
    source: Path  # the hosts.toml, or the directory of certificate files, it came from

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(path for host in self.hosts for path in host.tls.files)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _go_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``1m30s``, ``500ms``, ``0``); None if it is not one."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    return total if text else None


class _Table:
    """One TOML table of host settings, with errors that name the file and the key."""

    def __init__(self, path: Path, prefix: str, values: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.values = values

    def error(self, key: str, problem: str) -> ConfigError:
        where = ".".join(part for part in (self.prefix, key) if part)
        return ConfigError(f"{self.path}: {where}: {problem}")

    def file(self, key: str, text: str) -> Path:
        if not text:
            raise self.error(key, "an empty path")
        # Relative paths are relative to the hosts.toml, as containerd reads them.
        return self.path.parent / text

    def strings(self, key: str, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise self.error(key, f"expected a string or a list of strings, not {value!r}")

    def capabilities(self) -> Capability:
        value = self.values.get("capabilities")
        if value is None:
            return ALL_CAPABILITIES
        capabilities = Capability(0)
        for name in self.strings("capabilities", value):
            known = _CAPABILITY_NAMES.get(name.lower())
            if known is None:
                raise self.error(
                    "capabilities", f"unknown capability {name!r} (pull, resolve or push)"
                )
            capabilities |= known
        return capabilities

    def tls(self) -> TLSSettings:
        ca = self.values.get("ca")
        ca_files = () if ca is None else tuple(self.file("ca", p) for p in self.strings("ca", ca))
        skip_verify = self.values.get("skip_verify", False)
        if not isinstance(skip_verify, bool):
            raise self.error("skip_verify", f"expected true or false, not {skip_verify!r}")
        return TLSSettings(ca_files, self._client_pairs(), skip_verify)

    def _client_pairs(self) -> tuple[tuple[Path, Path | None], ...]:
        value = self.values.get("client")
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.error("client", f"expected a path or a list, not {value!r}")
        pairs: list[tuple[Path, Path | None]] = []
        for item in items:
            if isinstance(item, str):
                pairs.append((self.file("client", item), None))
            elif (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(part, str) for part in item)
            ):
                cert, key = item
                pairs.append((self.file("client", cert), self.file("client", key) if key else None))
            else:
                raise self.error(
                    "client", f"expected a path or a [certificate, key] pair, not {item!r}"
                )
        return tuple(pairs)

    def headers(self) -> tuple[tuple[str, str], ...]:
        table = self.values.get("header")
        if table is None:
            return ()
        if not isinstance(table, dict):
            raise self.error("header", f"expected a table, not {table!r}")
        return tuple(
            (name, value)
            for name, values in table.items()
            for value in self.strings(f"header.{name}", values)
        )

    def dial_timeout(self) -> float | None:
        value = self.values.get("dial_timeout")
        if value is None or value == "":
            return None
        seconds = _go_duration(value) if isinstance(value, str) else None
        if seconds is None:
            raise self.error("dial_timeout", f'expected a duration such as "1s", not {value!r}')
        return seconds or None

    def override_path(self) -> bool:
        value = self.values.get("override_path", False)
        if not isinstance(value, bool):
            raise self.error("override_path", f"expected true or false, not {value!r}")
        return value

    def url(self, key: str, text: str) -> HostURL:
        """A host's URL: ``[scheme://]host[:port][/path]``, with the API root it implies."""
        given = "://" in text
        parts = urllib.parse.urlsplit(text if given else f"https://{text}")
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise self.error(key, f"{text!r} is not an http(s) URL of a host")
        root = posixpath.normpath(parts.path) if parts.path else ""
        root = "" if root in (".", "/") else root
        if not self.override_path() and not root.endswith("/v2"):
            root += "/v2"
        return HostURL(parts.scheme if given else None, parts.netloc, root)

    def host(self, url: HostURL | None) -> RegistryHost:
        self.override_path()  # checked even where no URL uses it
        return RegistryHost(
            url,
            self.capabilities(),
            self.tls(),
            self.headers(),
            self.dial_timeout(),
            self.prefix,
        )


def parse_hosts_file(data: bytes, path: Path) -> HostsConfig:
    """The hosts of a ``hosts.toml`` whose bytes are ``data``; ``path`` names it in errors and
    anchors its relative paths."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    hosts: list[RegistryHost] = []
    tables = document.get("host", {})
    if not isinstance(tables, dict):
        raise ConfigError(f'{path}: host: expected [host."URL"] tables, not {tables!r}')
    # Tables keep the order in which the file first names them: the order to try them in.
    for name, values in tables.items():
        table = _Table(path, f"host.{_quoted(name)}", values)
        if not isinstance(values, dict):
            raise table.error("", f"expected a table, not {values!r}")
        hosts.append(table.host(table.url("", name)))
    top = _Table(path, "", document)
    server = document.get("server")
    if server is not None and not isinstance(server, str):
        raise top.error("server", f"expected a URL, not {server!r}")
    hosts.append(top.host(top.url("server", server) if server else None))
    return HostsConfig(tuple(hosts), path)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
