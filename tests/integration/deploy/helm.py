"""Steps shared by the chart tests: helm itself, rendered manifests, and kubeconfigs that carry
one ServiceAccount token each."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.kube import KubeCluster

__all__ = [
    "CHART",
    "CRDS",
    "Helm",
    "HelmError",
    "Identity",
    "by_kind",
    "dump",
    "manifests",
    "poll",
    "repository_crds",
    "token_identity",
]

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "lazyimage"
CRDS = REPO / "crds"
_HELM_TIMEOUT = 60.0


class HelmError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int | None, stderr: str) -> None:
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"helm {' '.join(args)}: {status}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Helm:
    """The helm binary, with its config, cache and data dirs under ``home`` (never the
    caller's own)."""

    binary: Path
    home: Path

    def run(
        self, *args: str, check: bool = True, timeout: float = _HELM_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        try:
            proc = subprocess.run(
                [str(self.binary), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise HelmError(args, None, stderr) from None
        if check and proc.returncode != 0:
            raise HelmError(args, proc.returncode, proc.stderr)
        return proc

    def template(
        self,
        namespace: str,
        *extra: str,
        release: str = "lazyimage",
        chart: Path = CHART,
    ) -> str:
        """``helm template`` of the chart as release ``release`` in ``namespace``."""
        return self.run("template", release, str(chart), "--namespace", namespace, *extra).stdout


def manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream, empty documents left out."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def repository_crds() -> dict[str, dict[str, Any]]:
    """The repository's CRDs (crds/*.yaml), parsed, by name."""
    crds = [yaml.safe_load(path.read_text()) for path in sorted(CRDS.glob("*.yaml"))]
    return {crd["metadata"]["name"]: crd for crd in crds}


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def dump(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as one JSON document per object, for ``kubectl apply -f -``."""
    return "\n".join(json.dumps(obj) for obj in objects)


@dataclass(frozen=True)
class Identity:
    """A ServiceAccount token and a kubeconfig that presents it."""

    token: str
    kubeconfig: Path


def token_identity(cluster: KubeCluster, path: Path, user: str, token: str) -> Identity:
    """Write a kubeconfig for ``cluster`` that authenticates with ``token`` (nothing else)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority-data": base64.b64encode(
                        cluster.ca_file.read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    return Identity(token=token, kubeconfig=path)


def poll(what: str, probe: Callable[[], str | None], timeout: float) -> None:
    """Call ``probe`` until it returns None (done); it returns what is still wrong. Fails with
    the last answer once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        problem = probe()
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {timeout:.0f} s: {problem}")
        time.sleep(0.2)
