"""Where the client's configuration comes from, loaded by the ``kubernetes`` package.

The official client reads kubeconfig files (several merged, as kubectl merges ``$KUBECONFIG``),
runs exec credential plugins, handles auth providers, and reads a pod's service account. This
module picks the source, loads it into a ``kubernetes.client.Configuration`` and turns every
way that can fail into a ``KubeConfigError`` with one line to show. Everything here blocks
(files, plugins): callers run it in a worker thread.
"""

from __future__ import annotations

import binascii
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyimage.kube._errors import KubeConfigError

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ConfigSource",
    "InCluster",
    "KubeconfigDict",
    "KubeconfigFiles",
    "find_source",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigSource:
    """Something a Configuration can be loaded from, again whenever credentials must be
    renewed. ``str()`` names it in error messages."""

    def load(self) -> Configuration:
        """A fresh Configuration; KubeConfigError if the source cannot give one."""
        from kubernetes.client import Configuration

        configuration = Configuration()
        configuration.host = ""  # not its default, http://localhost: a missing server is an error
        with _failures_named(str(self)), _logged_errors() as logged:
            self._load_into(configuration)
        if not configuration.host:
            raise KubeConfigError(f"{self}: the context's cluster has no server")
        if logged and not _has_credentials(configuration):
            # The kubernetes package logs a failing exec plugin and goes on without
            # credentials; every request would then be anonymous and refused.
            raise KubeConfigError(f"{self}: {'; '.join(logged)}")
        return configuration

    def refresh(self, configuration: Configuration) -> None:
        """Run the configuration's own refresh (an exec plugin's expired token, a rotated
        service account token file); KubeConfigError if it fails."""
        hook = configuration.refresh_api_key_hook
        if hook is not None:
            with _failures_named(str(self)):
                hook(configuration)

    def _load_into(self, configuration: Configuration) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class KubeconfigFiles(ConfigSource):
    """One kubeconfig file, or several merged as kubectl merges ``$KUBECONFIG``: the first
    file to name a cluster, user or context wins, and the first current-context."""

    paths: tuple[Path, ...]
    context: str | None = None

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError("KubeconfigFiles needs at least one path")
        for path in self.paths:
            # The kubernetes package takes the list as one os.pathsep-separated string.
            if os.pathsep in str(path):
                raise KubeConfigError(f"kubeconfig path {path} contains {os.pathsep!r}")

    def __str__(self) -> str:
        return f"kubeconfig {os.pathsep.join(str(p) for p in self.paths)}"

    def _load_into(self, configuration: Configuration) -> None:
        from kubernetes.config import load_kube_config

        for path in self.paths:
            if not path.is_file():
                raise KubeConfigError(f"kubeconfig {path}: no such file")
        context = self.context
        if context is None and len(self.paths) > 1:
            # The kubernetes package lets the last file's current-context win; kubectl, the
            # first file's that sets one.
            context = _first_current_context(self.paths)
        load_kube_config(
            config_file=os.pathsep.join(str(p) for p in self.paths),
            context=context,
            client_configuration=configuration,
            persist_config=False,  # never rewrite the user's files
        )


@dataclass(frozen=True)
class KubeconfigDict(ConfigSource):
    """A kubeconfig already parsed (a dict as YAML gives it)."""

    doc: Mapping[str, Any]
    context: str | None = None

    def __str__(self) -> str:
        return "kubeconfig (in memory)"

    def __repr__(self) -> str:
        return "KubeconfigDict(...)"  # a kubeconfig holds secrets

    def _load_into(self, configuration: Configuration) -> None:
        from kubernetes.config import load_kube_config_from_dict

        load_kube_config_from_dict(
            config_dict=dict(self.doc),
            context=self.context,
            client_configuration=configuration,
            persist_config=False,
        )


@dataclass(frozen=True)
class InCluster(ConfigSource):
    """The service account of the pod this runs in, and the ``kubernetes`` Service."""

    environ: Mapping[str, str]
    directory: Path = SERVICE_ACCOUNT_DIR

    def __str__(self) -> str:
        return f"in-cluster service account {self.directory}"

    def __repr__(self) -> str:
        return f"InCluster(directory={self.directory})"

    def _load_into(self, configuration: Configuration) -> None:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        InClusterConfigLoader(
            token_filename=str(self.directory / "token"),
            cert_filename=str(self.directory / "ca.crt"),
            environ=self.environ,
        ).load_and_set(configuration)


def find_source(
    kubeconfig: Path | None,
    environ: Mapping[str, str],
    service_account: Path = SERVICE_ACCOUNT_DIR,
    home: Path | None = None,
) -> ConfigSource:
    """The first that applies: ``kubeconfig``; the files of ``$KUBECONFIG`` that exist,
    merged; the pod's service account; ``~/.kube/config``."""
    if kubeconfig is not None:
        return KubeconfigFiles((kubeconfig,))
    listed = [Path(p).expanduser() for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        # kubectl skips the files of $KUBECONFIG that do not exist.
        present = tuple(p for p in listed if p.exists())
        if not present:
            names = os.pathsep.join(str(p) for p in listed)
            raise KubeConfigError(f"none of the files in $KUBECONFIG exists: {names}")
        return KubeconfigFiles(present)
    if environ.get("KUBERNETES_SERVICE_HOST") and (service_account / "token").is_file():
        return InCluster(environ, service_account)
    default = home / ".kube" / "config" if home is not None else None
    if default is not None and default.is_file():
        return KubeconfigFiles((default,))
    raise KubeConfigError(
        "no Kubernetes configuration: no kubeconfig was given, $KUBECONFIG is not set, "
        f"there is no service account token in {service_account} (or KUBERNETES_SERVICE_HOST "
        f"is unset), and {default or '~/.kube/config'} does not exist"
    )


def _first_current_context(paths: tuple[Path, ...]) -> str | None:
    import yaml

    for path in paths:
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("current-context"):
            return str(doc["current-context"])
    return None


def _has_credentials(configuration: Configuration) -> bool:
    return bool(
        configuration.api_key.get("BearerToken")
        or configuration.api_key.get("authorization")
        or configuration.cert_file
    )


@contextmanager
def _failures_named(source: str) -> Iterator[None]:
    """Every error of loading, as a KubeConfigError naming ``source``."""
    import yaml
    from kubernetes.config import ConfigException

    try:
        yield
    except KubeConfigError:
        raise
    except ConfigException as exc:
        raise KubeConfigError(f"{source}: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{source}: not valid YAML: {_one_line(exc)}") from None
    except OSError as exc:
        raise KubeConfigError(f"{source}: {_one_line(exc)}") from None
    except binascii.Error as exc:
        raise KubeConfigError(f"{source}: invalid base64 data ({_one_line(exc)})") from None
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        # What the kubernetes package raises on a document of the wrong shape.
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise KubeConfigError(
            f"{source}: not a kubeconfig this client can read ({reason})"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _ThreadErrors(logging.Handler):
    """The ERROR records logged from one thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(_one_line(Exception(record.getMessage())))


@contextmanager
def _logged_errors() -> Iterator[list[str]]:
    """The errors the kubernetes package logs (to the root logger) while this thread loads."""
    root = logging.getLogger()
    handler = _ThreadErrors()
    root.addHandler(handler)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
