"""The agent's configuration: command-line flags, each with a LAZYIMAGE_* environment default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazyimage import names

__all__ = ["AgentConfig", "build_parser", "parse_config"]


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    socket: Path
    listen: str
    docker_config: Path | None
    insecure_registries: tuple[str, ...]
    cache_size: int
    prefetch_bandwidth: int  # bytes/s for prefetch and background fill; 0 = unlimited
    background_fill: bool
    background_quiet: float  # seconds without on-demand fetches before fill goes on
    stall_timeout: float
    log_level: str
    control_api: bool = True  # serve the /v1 control API on --listen
    # The Kubernetes node this agent serves; set, the agent follows that node's LazyImageNode
    # and carries out the operator's prefetch orders. Unset, it runs without a control plane.
    node_name: str | None = None
    kubeconfig: Path | None = None  # None: the pod's service account (or $KUBECONFIG)
    report_interval: float = 30.0  # seconds between status reports without a change
    profile_window: float = 15.0  # seconds of a mount's reads kept as its startup profile
    # Keep the FUSE connection in a holder process, so a restarted agent takes the mount over.
    fuse_holder: bool = True

    @property
    def mountpoint(self) -> Path:
        return self.state_dir / "mnt"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def tocs_dir(self) -> Path:
        return self.state_dir / "tocs"

    @property
    def snapshotter_dir(self) -> Path:
        return self.state_dir / "snapshotter"

    @property
    def holder_socket(self) -> Path:
        return self.state_dir / "fuse-holder.sock"

    @property
    def mount_book(self) -> Path:
        return self.state_dir / "mounts.json"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyimage-agent",
        description=(
            "The lazyimage node agent: serves eStargz layers lazily over FUSE and acts as the "
            f"containerd proxy snapshotter {names.SNAPSHOTTER_NAME!r}. Every flag can also be "
            "set through the LAZYIMAGE_* environment variable named after it."
        ),
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env.get("LAZYIMAGE_STATE_DIR", names.DEFAULT_STATE_DIR)),
        help="snapshots, chunk cache and metadata (LAZYIMAGE_STATE_DIR)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=Path(env.get("LAZYIMAGE_SOCKET", names.DEFAULT_SOCKET)),
        help="the snapshotter's gRPC unix socket (LAZYIMAGE_SOCKET)",
    )
    parser.add_argument(
        "--listen",
        default=env.get("LAZYIMAGE_LISTEN", "127.0.0.1:9090"),
        metavar="HOST:PORT",
        help="/metrics, /healthz, /readyz and the control API (LAZYIMAGE_LISTEN)",
    )
    docker_config = env.get("LAZYIMAGE_DOCKER_CONFIG")
    parser.add_argument(
        "--docker-config",
        type=Path,
        default=Path(docker_config) if docker_config else None,
        metavar="FILE",
        help="registry credentials, docker config.json format (LAZYIMAGE_DOCKER_CONFIG)",
    )
    insecure = [h for h in env.get("LAZYIMAGE_INSECURE_REGISTRY", "").split(",") if h]
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=insecure,
        metavar="HOST:PORT",
        help="plain-http registry, repeatable (LAZYIMAGE_INSECURE_REGISTRY, comma-separated)",
    )
    parser.add_argument(
        "--cache-size",
        type=int,
        default=int(env.get("LAZYIMAGE_CACHE_SIZE", str(10 << 30))),
        metavar="BYTES",
        help="upper bound of the on-disk chunk cache (LAZYIMAGE_CACHE_SIZE)",
    )
    parser.add_argument(
        "--prefetch-bandwidth",
        type=int,
        default=int(env.get("LAZYIMAGE_PREFETCH_BANDWIDTH", "0")),
        metavar="BYTES_PER_S",
        help="cap on prefetch and background fill, 0 for none (LAZYIMAGE_PREFETCH_BANDWIDTH)",
    )
    parser.add_argument(
        "--background-fill",
        action=argparse.BooleanOptionalAction,
        default=env.get("LAZYIMAGE_BACKGROUND_FILL", "true").lower() not in ("0", "false", "no"),
        help="fetch the rest of each layer in the background (LAZYIMAGE_BACKGROUND_FILL)",
    )
    parser.add_argument(
        "--background-quiet",
        type=float,
        default=float(env.get("LAZYIMAGE_BACKGROUND_QUIET", "2.0")),
        metavar="SECONDS",
        help="background fill starts this long after a layer's prefetch, and pauses until "
        "on-demand fetches were idle this long, so it stays out of a starting container's "
        "way (LAZYIMAGE_BACKGROUND_QUIET)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=float(env.get("LAZYIMAGE_STALL_TIMEOUT", "2.0")),
        metavar="SECONDS",
        help="abandon and retry a range request that makes no progress (LAZYIMAGE_STALL_TIMEOUT)",
    )
    parser.add_argument(
        "--control-api",
        action=argparse.BooleanOptionalAction,
        default=env.get("LAZYIMAGE_CONTROL_API", "true").lower() not in ("0", "false", "no"),
        help="serve the /v1 control API (mount, unmount, prefetch) on --listen; it has no "
        "authentication, so turn it off where the port is reachable from other pods "
        "(LAZYIMAGE_CONTROL_API)",
    )
    parser.add_argument(
        "--fuse-holder",
        action=argparse.BooleanOptionalAction,
        default=env.get("LAZYIMAGE_FUSE_HOLDER", "true").lower() not in ("0", "false", "no"),
        help="keep the FUSE connection in a small holder process, so that an agent started "
        "again after a crash, a stop or an upgrade takes the mount over and running "
        "containers only pause; without it the mount ends with the agent "
        "(LAZYIMAGE_FUSE_HOLDER)",
    )
    parser.add_argument(
        "--node-name",
        default=env.get("LAZYIMAGE_NODE_NAME") or None,
        metavar="NODE",
        help="follow this node's LazyImageNode and carry out its prefetch orders; set it "
        "from the pod's spec.nodeName (LAZYIMAGE_NODE_NAME)",
    )
    kubeconfig = env.get("LAZYIMAGE_KUBECONFIG")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(kubeconfig) if kubeconfig else None,
        metavar="FILE",
        help="API server credentials for --node-name; default: the pod's service account, "
        "else $KUBECONFIG (LAZYIMAGE_KUBECONFIG)",
    )
    parser.add_argument(
        "--report-interval",
        type=float,
        default=float(env.get("LAZYIMAGE_REPORT_INTERVAL", "30")),
        metavar="SECONDS",
        help="with --node-name: report the heartbeat and cache hits at least this often; "
        "finished prefetches are reported at once (LAZYIMAGE_REPORT_INTERVAL)",
    )
    parser.add_argument(
        "--profile-window",
        type=float,
        default=float(env.get("LAZYIMAGE_PROFILE_WINDOW", "15")),
        metavar="SECONDS",
        help="with --node-name: report the files each image's containers read in their first "
        "SECONDS as the image's learned startup profile; 0 turns it off "
        "(LAZYIMAGE_PROFILE_WINDOW)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("LAZYIMAGE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="(LAZYIMAGE_LOG_LEVEL)",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    args = build_parser(os.environ if env is None else env).parse_args(argv)
    return AgentConfig(
        state_dir=args.state_dir,
        socket=args.socket,
        listen=args.listen,
        docker_config=args.docker_config,
        insecure_registries=tuple(args.insecure_registry),
        cache_size=args.cache_size,
        prefetch_bandwidth=args.prefetch_bandwidth,
        background_fill=args.background_fill,
        background_quiet=args.background_quiet,
        stall_timeout=args.stall_timeout,
        log_level=args.log_level,
        control_api=args.control_api,
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        report_interval=args.report_interval,
        profile_window=args.profile_window,
        fuse_holder=args.fuse_holder,
    )
