"""The reference stargz-snapshotter, driven as containerd drives it, for side-by-side figures.

``StargzReference(base, passthrough=...)`` starts ``containerd-stargz-grpc`` (stargz-snapshotter
v0.18.2's service, tests/goref) with its own root, socket and TOML config, and a containerd 1.6
(Debian) that uses it as the proxy snapshotter ``stargz``. Then:

- :meth:`rpull` pulls an image lazily (``ctr-remote images rpull --plain-http``): each layer
  is FUSE-mounted by the snapshotter at ``<root>/snapshotter/snapshots/<id>/fs``;
- :meth:`mount_rootfs` prepares an active snapshot on the image's top layer (``ctr snapshots
  prepare --mounts``, as a container's rootfs would be) and mounts it, an overlay whose
  lowerdirs are those FUSE mounts and whose upper and work dirs are on local disk;
- :meth:`layer_mounts` lists the FUSE mounts, lowest layer first.

With ``containerd=False`` only the snapshotter starts, for a containerd of the caller's
(the cold-start benchmark's CRI node) to use through ``socket``.

``close`` removes the rootfs mounts, stops containerd and the snapshotter (SIGTERM, then
SIGKILL), and aborts and detaches any FUSE mount left under ``base``.

The TOML sets the upstream defaults that the upstream daemon fills in from struct tags
(``[directory_cache] direct``, ``[fuse] merge_buffer_size`` and ``merge_worker_count``), since
the thin main in tests/goref decodes the file as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lazyimage.fusefs import force_unmount, mounts_under

from tests.bench.mounts import umount
from tests.fixtures.containerd import ContainerdServer
from tests.fixtures.gotools import go_tool

__all__ = ["ReferenceError", "StargzReference", "chain_ids"]

_NAMESPACE = "bench"
_SNAPSHOTTER = "stargz"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_CTR_TIMEOUT = 300.0


class ReferenceError(RuntimeError):
    """The reference snapshotter or one of its commands failed."""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The snapshot chain IDs of an image's layers (OCI image spec), lowest first."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            text = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chain


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


class StargzReference:
    def __init__(
        self,
        base: Path,
        *,
        passthrough: bool,
        insecure_hosts: Sequence[str] = (),
        background_fetch: bool = True,
        containerd: bool = True,
    ) -> None:
        self.base = base
        self.passthrough = passthrough
        self.background_fetch = background_fetch
        self.root = base / "stargz-root"
        self.socket = base / "stargz.sock"
        self.config_path = base / "stargz.toml"
        self.log_path = base / "stargz.log"
        self._insecure = list(insecure_hosts)
        self._with_containerd = containerd  # False: the caller brings its own (CRI)
        self._proc: subprocess.Popen[bytes] | None = None
        self._containerd: ContainerdServer | None = None
        self._rootfs: list[Path] = []

    @property
    def label(self) -> str:
        return f"reference, passthrough {'on' if self.passthrough else 'off'}"

    def _config(self) -> str:
        lines = [
            f"no_background_fetch = {str(not self.background_fetch).lower()}",
            "[directory_cache]",
            "  direct = true",
            "[fuse]",
            f"  passthrough = {str(self.passthrough).lower()}",
            "  merge_buffer_size = 419430400",
            "  merge_worker_count = 10",
        ]
        for host in self._insecure:
            lines += [
                f"[[resolver.host.{_toml_string(host)}.mirrors]]",
                f"  host = {_toml_string(host)}",
                "  insecure = true",
            ]
        return "\n".join(lines) + "\n"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StargzReference:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        docker_config = self.base / "docker-config"  # no credentials: the registry is open
        docker_config.mkdir(exist_ok=True)
        env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
        cmd = [
            str(go_tool("containerd-stargz-grpc")),
            "--address", str(self.socket),
            "--root", str(self.root),
            "--config", str(self.config_path),
            "--log-level", "info",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=env, start_new_session=True
            )
        try:
            self._wait_socket()
            if not self._with_containerd:
                return self
            proxy = "\n".join(
                [
                    "[proxy_plugins]",
                    f"  [proxy_plugins.{_SNAPSHOTTER}]",
                    '    type = "snapshot"',
                    f"    address = {_toml_string(str(self.socket))}",
                ]
            )
            self._containerd = ContainerdServer(self.base / "ctd", proxy).start()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_socket(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ReferenceError(f"containerd-stargz-grpc exited:\n{self.log()}")
            if self.socket.exists():
                with socket.socket(socket.AF_UNIX) as sock:
                    try:
                        sock.connect(str(self.socket))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        raise ReferenceError(f"containerd-stargz-grpc did not listen in {_START_TIMEOUT} s")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        for target in reversed(self._rootfs):
            umount(target)
        self._rootfs.clear()
        if self._containerd is not None:
            self._containerd.stop()
            self._containerd = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # On SIGTERM the snapshotter unmounts its layers itself.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
        force_unmount(self.base)

    def __enter__(self) -> StargzReference:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands ----------------------------------------------------------------------------

    def _ctr(self, *args: str, tool: str = "ctr", timeout: float = _CTR_TIMEOUT) -> str:
        if self._containerd is None:
            raise ReferenceError("the reference is not running")
        binary = "/usr/bin/ctr" if tool == "ctr" else str(go_tool(tool))
        cmd = [binary, "--address", str(self._containerd.socket), "--namespace", _NAMESPACE]
        cmd += args
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ReferenceError(f"{' '.join(cmd)} timed out after {timeout} s") from None
        if done.returncode != 0:
            raise ReferenceError(
                f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n"
                f"snapshotter log:\n{self.log()}"
            )
        return done.stdout

    def rpull(self, ref: str) -> float:
        """``ctr-remote images rpull --plain-http REF``; returns the seconds it took."""
        started = time.perf_counter()
        self._ctr("images", "rpull", "--plain-http", ref, tool="ctr-remote")
        return time.perf_counter() - started

    def prepare(self, key: str, parent: str) -> list[dict[str, Any]]:
        """An active snapshot on ``parent`` (a chain ID); its mounts, as containerd gives them."""
        out = self._ctr(
            "snapshots", "--snapshotter", _SNAPSHOTTER, "prepare", "--mounts", key, parent
        )
        mounts = json.loads(out)
        if not isinstance(mounts, list) or not mounts:
            raise ReferenceError(f"no mounts for snapshot {key}: {out!r}")
        return [{str(k).lower(): v for k, v in m.items()} for m in mounts]

    def mount_rootfs(self, key: str, parent: str, target: Path) -> Path:
        """Prepare ``key`` on ``parent`` and mount it at ``target`` (removed by ``close``)."""
        (mount,) = self.prepare(key, parent)
        target.mkdir(parents=True, exist_ok=True)
        options = ",".join(mount.get("options") or [])
        kind = mount.get("type", "")
        if kind == "bind":
            cmd = ["mount", "-o", options, str(mount["source"]), str(target)]
        else:
            cmd = ["mount", "-t", kind, str(mount.get("source") or kind), "-o", options]
            cmd.append(str(target))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise ReferenceError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        self._rootfs.append(target)
        return target

    def unmount_rootfs(self, target: Path) -> None:
        if target in self._rootfs:
            self._rootfs.remove(target)
            umount(target)

    def layer_mounts(self) -> list[Path]:
        """The snapshotter's FUSE mounts (one per remote layer), in snapshot-id order."""
        snapshots = self.root / "snapshotter" / "snapshots"
        found = [Path(m.mountpoint) for m in mounts_under(snapshots) if m.is_fuse]
        return sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)

    def pid(self) -> int:
        if self._proc is None:
            raise ReferenceError("the reference is not running")
        return self._proc.pid
