"""Registry credentials from docker config files and Kubernetes pull secrets.

A ``Keychain`` is one source's credentials, parsed; ``DockerConfigFile`` is the node's docker
config file, read again when it changes.

Keys are matched the way kubelet matches pull-secret keys: a key is a host with an optional
port and path (``https://`` and a trailing ``/v1/`` or ``/v2/`` are ignored), a ``*`` may stand
for one label of the host, and the most specific match wins. Docker Hub's key
``https://index.docker.io/v1/`` answers for ``docker.io`` and ``registry-1.docker.io``.
Credential helpers (``credsStore``, ``credHelpers``) are external programs and are not run.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyimage.errors import RegistryError
from lazyimage.registry._reference import DOCKER_HUB, DOCKER_HUB_HOST

__all__ = ["Credentials", "DockerConfigFile", "Keychain", "registry_name"]

log = logging.getLogger("lazyimage.registry")

_HUB_KEYS = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_HOST})


@dataclass(frozen=True, repr=False)
class Credentials:
    """A username and password, or an identity token (an OAuth2 refresh token)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    # A bearer token to present as is, skipping the token server.
    registry_token: str = ""

    def __repr__(self) -> str:
        # Never put secrets in logs or tracebacks.
        return f"Credentials(username={self.username!r}, password=***)"

    @property
    def has_basic(self) -> bool:
        return bool(self.username) and bool(self.password)


@dataclass(frozen=True)
class _Entry:
    host: str  # lower case, may contain "*" labels and a ":port"
    path: str  # repository prefix, "" for any
    credentials: Credentials


def _normalise_host(host: str) -> str:
    host = host.lower()
    return DOCKER_HUB if host in _HUB_KEYS else host


def registry_name(host: str) -> str:
    """The one name of a registry, whether given as a reference's registry or as the host a
    request went to (``registry-1.docker.io`` and ``index.docker.io`` are ``docker.io``)."""
    return _normalise_host(host)


def _split_key(key: str) -> tuple[str, str]:
    """``https://host:port/path/v1/`` -> (``host:port``, ``path``)."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    host, _, path = text.partition("/")
    path = path.strip("/")
    # Docker's legacy keys end in the API version; it is not part of a repository path.
    if path in ("v1", "v2"):
        path = ""
    return _normalise_host(host), path


def _host_matches(pattern: str, host: str) -> bool:
    pattern_name, _, pattern_port = pattern.partition(":")
    name, _, port = host.partition(":")
    if pattern_port != port:
        return False
    if "*" not in pattern_name:
        return pattern_name == name
    # A glob covers exactly one label per "*" label, as kubelet does.
    pattern_labels = pattern_name.split(".")
    labels = name.split(".")
    return len(pattern_labels) == len(labels) and all(
        fnmatch.fnmatchcase(label, p) for p, label in zip(pattern_labels, labels, strict=True)
    )


def _path_matches(prefix: str, repository: str | None) -> bool:
    if not prefix:
        return True
    if repository is None:
        return False
    return repository == prefix or repository.startswith(prefix + "/")


def _credentials(value: Any, key: str, source: str) -> Credentials | None:
    if not isinstance(value, dict):
        raise RegistryError(f"{source}: entry for {key!r} is not an object", what="credentials")
    username = str(value.get("username") or "")
    password = str(value.get("password") or "")
    auth = value.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RegistryError(
                f"{source}: entry for {key!r} has an auth field that is not base64",
                what="credentials",
            ) from exc
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise RegistryError(
                f"{source}: entry for {key!r} has an auth field without 'user:password'",
                what="credentials",
            )
        username, password = user, secret
    identity = str(value.get("identitytoken") or "")
    registry_token = str(value.get("registrytoken") or "")
    if not (username or password or identity or registry_token):
        return None
    return Credentials(username, password, identity, registry_token)


def _load_json(payload: bytes, source: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{source} is not valid JSON: {exc}", what="credentials") from exc
    if not isinstance(obj, dict):
        raise RegistryError(f"{source} is not a JSON object", what="credentials")
    return obj


class Keychain:
    """An ordered set of credentials, looked up by registry host (and repository)."""

    def __init__(self, entries: dict[str, Credentials] | None = None) -> None:
        self._entries: tuple[_Entry, ...] = ()
        if entries:
            self._entries = tuple(_Entry(*_split_key(key), creds) for key, creds in entries.items())

    @classmethod
    def _from_entries(cls, entries: tuple[_Entry, ...]) -> Keychain:
        keychain = cls()
        keychain._entries = entries
        return keychain

    @classmethod
    def from_docker_config(cls, path: Path | None = None) -> Keychain:
        """Read a docker ``config.json``: ``path``, else ``$DOCKER_CONFIG/config.json``, else
        ``~/.docker/config.json``. A missing file gives an empty keychain."""
        path = _docker_config_path(path)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc}", what="credentials") from exc
        obj = _load_json(payload, str(path))
        return cls._parse_auths(obj.get("auths") or {}, str(path))

    @classmethod
    def from_dockerconfigjson(cls, payload: bytes, source: str = "pull secret") -> Keychain:
        """Read a Kubernetes pull secret value: ``.dockerconfigjson`` (``{"auths": {...}}``) or
        the legacy ``.dockercfg`` (the ``auths`` map itself). ``source`` names it in errors."""
        obj = _load_json(payload, source)
        auths = obj["auths"] if isinstance(obj.get("auths"), dict) else obj
        return cls._parse_auths(auths, source)

    @classmethod
    def _parse_auths(cls, auths: Any, source: str) -> Keychain:
        if not isinstance(auths, dict):
            raise RegistryError(f"{source}: 'auths' is not an object", what="credentials")
        entries = []
        for key, value in auths.items():
            creds = _credentials(value, str(key), source)
            if creds is not None:
                entries.append(_Entry(*_split_key(str(key)), creds))
        return cls._from_entries(tuple(entries))

    def merged(self, other: Keychain) -> Keychain:
        """Both keychains; on equally specific matches this one's entries win."""
        return self._from_entries(self._entries + other._entries)

    def lookup(self, registry: str, repository: str | None = None) -> Credentials | None:
        """The credentials for ``registry`` (a host, ``host:port`` or Docker Hub alias).

        Exact hosts beat globs, longer path prefixes beat shorter ones, and earlier entries
        beat later ones. Path-scoped entries match only when ``repository`` is given.
        """
        host = _normalise_host(registry)
        best: tuple[int, int, int] | None = None
        found: Credentials | None = None
        for position, entry in enumerate(self._entries):
            if not _host_matches(entry.host, host) or not _path_matches(entry.path, repository):
                continue
            rank = (0 if "*" in entry.host else 1, len(entry.path), -position)
            if best is None or rank > best:
                best, found = rank, entry.credentials
        return found

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keychain) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self._entries)

    def __repr__(self) -> str:
        hosts = ", ".join(e.host + (f"/{e.path}" if e.path else "") for e in self._entries)
        return f"Keychain([{hosts}])"


def _docker_config_path(path: Path | None) -> Path:
    if path is not None:
        return path
    directory = os.environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a changed file from the one read before: inode, size, mtime and ctime
    (a file replaced by rename gets a new inode; one rewritten in place, a new mtime)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class DockerConfigFile:
    """The node's docker ``config.json`` (``path``, else as ``Keychain.from_docker_config``
    finds it), read again when it changes.

    ``keychain()`` looks at the file at most once every ``check_interval`` seconds (a stat,
    no read unless it changed); ``reload()`` looks now. A file that changes into something
    that cannot be parsed (say, half written) leaves the credentials read before in use until
    a later check can read it. A file that is removed leaves no credentials.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = _docker_config_path(path)
        self._check_interval = check_interval
        self._clock = clock
        self._stamp = _stamp(self.path)
        # The first read's errors are the caller's: a bad file at start is a bad setup.
        self._keychain = Keychain.from_docker_config(self.path)
        self._checked = clock()

    def keychain(self) -> Keychain:
        if self._clock() - self._checked >= self._check_interval:
            self.reload()
        return self._keychain

    def reload(self) -> bool:
        """Read the file again if it changed since it was last read; True if it did."""
        self._checked = self._clock()
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        try:
            keychain = Keychain.from_docker_config(self.path)
        except RegistryError as exc:
            log.warning("docker config %s changed but cannot be read, kept: %s", self.path, exc)
            return False
        self._stamp = stamp
        changed = keychain != self._keychain
        self._keychain = keychain
        if changed:
            log.info("docker config %s read again: %d entries", self.path, len(keychain))
        return changed
