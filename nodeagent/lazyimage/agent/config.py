"""The agent's configuration: command-line flags, each with a LAZYIMAGE_* environment default.

A bad flag or a bad variable ends the agent before it starts, with a message naming it and
exit code 2 (argparse's usage error).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazyimage import envflags, names
from lazyimage.registry import RegistryHosts

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
    # The unix socket of the /v1 control API (mount, unmount, prefetch); None: no control API.
    # It is never served on --listen, which is reachable from the network.
    control_socket: Path | None = None
    # The Kubernetes node this agent serves; set, the agent follows that node's LazyImageNode
    # and carries out the operator's prefetch orders. Unset, it runs without a control plane.
    node_name: str | None = None
    kubeconfig: Path | None = None  # None: the pod's service account (or $KUBECONFIG)
    report_interval: float = 30.0  # seconds between status reports without a change
    profile_window: float = 15.0  # seconds of a mount's reads kept as its startup profile
    # Keep the FUSE connection in a holder process, so a restarted agent takes the mount over.
    fuse_holder: bool = True
    fuse_holder_cgroup: str | None = None
    # The node's CRI socket (containerd's); set, a prewarm pulls the image through it, so
    # kubelet finds the image present. The handler names the runtime class it is pulled for.
    cri_socket: Path | None = None
    cri_runtime_handler: str = ""
    # containerd's per-registry configuration (HOST/hosts.toml, certificates); None: none.
    registry_config: Path | None = None

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


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def build_parser(env: envflags.EnvDefaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyimage-agent",
        description=(
            "The lazyimage node agent: serves eStargz layers lazily over FUSE and acts as the "
            f"containerd proxy snapshotter {names.SNAPSHOTTER_NAME!r}. Every flag can also be "
            "set through the LAZYIMAGE_* environment variable named after it."
        ),
        epilog=(
            "Exit codes: 0 stopped by SIGTERM or SIGINT, 1 internal error, 2 a bad flag or "
            "LAZYIMAGE_* variable, 7 the system refused (a port in use, a path denied)."
        ),
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env.text("LAZYIMAGE_STATE_DIR", names.DEFAULT_STATE_DIR)),
        help="snapshots, chunk cache and metadata (LAZYIMAGE_STATE_DIR)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=Path(env.text("LAZYIMAGE_SOCKET", names.DEFAULT_SOCKET)),
        help="the snapshotter's gRPC unix socket (LAZYIMAGE_SOCKET)",
    )
    parser.add_argument(
        "--listen",
        type=envflags.host_port,
        default=env("LAZYIMAGE_LISTEN", envflags.host_port, "127.0.0.1:9090"),
        metavar="HOST:PORT",
        help="/metrics, /healthz, /readyz and /status; never the control API (LAZYIMAGE_LISTEN)",
    )
    parser.add_argument(
        "--control-socket",
        type=Path,
        default=_path(env.text("LAZYIMAGE_CONTROL_SOCKET")),
        metavar="PATH",
        help="serve the /v1 control API (mount, unmount, prefetch) on this unix socket, "
        "created owner-only (0600); without it there is no control API "
        "(LAZYIMAGE_CONTROL_SOCKET)",
    )
    # Earlier agents served the control API on --listen unless --no-control-api: that flag (and
    # LAZYIMAGE_CONTROL_API=false) now asks for the default, and asking for it on is refused.
    parser.add_argument(
        "--control-api",
        action=argparse.BooleanOptionalAction,
        default=env("LAZYIMAGE_CONTROL_API", envflags.boolean, False),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--docker-config",
        type=Path,
        default=_path(env.text("LAZYIMAGE_DOCKER_CONFIG")),
        metavar="FILE",
        help="registry credentials, docker config.json format (LAZYIMAGE_DOCKER_CONFIG)",
    )
    insecure = [h.strip() for h in env.text("LAZYIMAGE_INSECURE_REGISTRY").split(",") if h.strip()]
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=insecure,
        metavar="HOST:PORT",
        help="plain-http registry, repeatable (LAZYIMAGE_INSECURE_REGISTRY, comma-separated)",
    )
    parser.add_argument(
        "--registry-config",
        type=envflags.directory,
        default=env(
            "LAZYIMAGE_REGISTRY_CONFIG", envflags.directory, RegistryHosts.containerd_default()
        ),
        metavar="DIR",
        help="containerd's registry configuration (its config_path): mirrors, CAs and client "
        "certificates in DIR/HOST/hosts.toml, read again when they change; default "
        f"{names.DEFAULT_REGISTRY_CONFIG} if it exists, '' for none (LAZYIMAGE_REGISTRY_CONFIG)",
    )
    parser.add_argument(
        "--cache-size",
        type=envflags.positive_int,
        default=env("LAZYIMAGE_CACHE_SIZE", envflags.positive_int, 10 << 30),
        metavar="BYTES",
        help="upper bound of the on-disk chunk cache (LAZYIMAGE_CACHE_SIZE)",
    )
    parser.add_argument(
        "--prefetch-bandwidth",
        type=envflags.non_negative_int,
        default=env("LAZYIMAGE_PREFETCH_BANDWIDTH", envflags.non_negative_int, 0),
        metavar="BYTES_PER_S",
        help="cap on prefetch and background fill, 0 for none (LAZYIMAGE_PREFETCH_BANDWIDTH)",
    )
    parser.add_argument(
        "--background-fill",
        action=argparse.BooleanOptionalAction,
        default=env("LAZYIMAGE_BACKGROUND_FILL", envflags.boolean, True),
        help="fetch the rest of each layer in the background (LAZYIMAGE_BACKGROUND_FILL)",
    )
    parser.add_argument(
        "--background-quiet",
        type=envflags.non_negative_float,
        default=env("LAZYIMAGE_BACKGROUND_QUIET", envflags.non_negative_float, 2.0),
        metavar="SECONDS",
        help="background fill starts this long after a layer's prefetch, and pauses until "
        "on-demand fetches were idle this long, so it stays out of a starting container's "
        "way (LAZYIMAGE_BACKGROUND_QUIET)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=envflags.positive_float,
        default=env("LAZYIMAGE_STALL_TIMEOUT", envflags.positive_float, 2.0),
        metavar="SECONDS",
        help="abandon and retry a range request that makes no progress (LAZYIMAGE_STALL_TIMEOUT)",
    )
    parser.add_argument(
        "--fuse-holder",
        action=argparse.BooleanOptionalAction,
        default=env("LAZYIMAGE_FUSE_HOLDER", envflags.boolean, True),
        help="keep the FUSE connection in a small holder process, so that an agent started "
        "again after a crash, a stop or an upgrade takes the mount over and running "
        "containers only pause; without it the mount ends with the agent "
        "(LAZYIMAGE_FUSE_HOLDER)",
    )
    parser.add_argument(
        "--fuse-holder-cgroup",
        default=env.text("LAZYIMAGE_FUSE_HOLDER_CGROUP") or None,
        metavar="PATH",
        help="move the holder to this cgroup (in every hierarchy) when it starts, so that it "
        "outlives the agent's pod as well as its process; needs the host's PID namespace "
        "(LAZYIMAGE_FUSE_HOLDER_CGROUP)",
    )
    parser.add_argument(
        "--node-name",
        default=env.text("LAZYIMAGE_NODE_NAME") or None,
        metavar="NODE",
        help="follow this node's LazyImageNode and carry out its prefetch orders; set it "
        "from the pod's spec.nodeName (LAZYIMAGE_NODE_NAME)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=_path(env.text("LAZYIMAGE_KUBECONFIG")),
        metavar="FILE",
        help="API server credentials for --node-name; default: the files of $KUBECONFIG "
        "(merged, as kubectl does), else the pod's service account, else ~/.kube/config "
        "(LAZYIMAGE_KUBECONFIG)",
    )
    parser.add_argument(
        "--report-interval",
        type=envflags.positive_float,
        default=env("LAZYIMAGE_REPORT_INTERVAL", envflags.positive_float, 30.0),
        metavar="SECONDS",
        help="with --node-name: report the heartbeat and cache hits at least this often; "
        "finished prefetches are reported at once (LAZYIMAGE_REPORT_INTERVAL)",
    )
    parser.add_argument(
        "--profile-window",
        type=envflags.non_negative_float,
        default=env("LAZYIMAGE_PROFILE_WINDOW", envflags.non_negative_float, 15.0),
        metavar="SECONDS",
        help="with --node-name: report the files each image's containers read in their first "
        "SECONDS as the image's learned startup profile; 0 turns it off "
        "(LAZYIMAGE_PROFILE_WINDOW)",
    )
    parser.add_argument(
        "--cri-socket",
        type=Path,
        default=_path(env.text("LAZYIMAGE_CRI_SOCKET")),
        metavar="PATH",
        help="the node's CRI socket (containerd's, e.g. /run/containerd/containerd.sock): a "
        "prewarm pulls its image through it, as kubelet would, so the pod's own pull finds "
        "the image present; without it a prewarm only fills the cache (LAZYIMAGE_CRI_SOCKET)",
    )
    parser.add_argument(
        "--cri-runtime-handler",
        default=env.text("LAZYIMAGE_CRI_RUNTIME_HANDLER"),
        metavar="HANDLER",
        help="with --cri-socket: the runtime handler whose snapshotter prewarmed images are "
        "pulled into, the lazyimage RuntimeClass's handler on containerd 2.x "
        "(LAZYIMAGE_CRI_RUNTIME_HANDLER)",
    )
    levels = ("debug", "info", "warning", "error")
    parser.add_argument(
        "--log-level",
        type=envflags.choice(*levels),
        default=env("LAZYIMAGE_LOG_LEVEL", envflags.choice(*levels), "info"),
        metavar="LEVEL",
        help=f"{', '.join(levels)} (LAZYIMAGE_LOG_LEVEL)",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """The agent's configuration; a bad flag or variable exits with code 2 and its name."""
    defaults = envflags.EnvDefaults(os.environ if env is None else env)
    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    if defaults.problems:
        parser.error("; ".join(defaults.problems))
    if args.control_api:
        parser.error(
            "--control-api (LAZYIMAGE_CONTROL_API) is gone: the control API is never served on "
            "--listen; use --control-socket PATH (LAZYIMAGE_CONTROL_SOCKET)"
        )
    if args.control_socket is not None and args.control_socket == args.socket:
        parser.error("--control-socket must not be the snapshotter's --socket")
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
        control_socket=args.control_socket,
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        report_interval=args.report_interval,
        profile_window=args.profile_window,
        fuse_holder=args.fuse_holder,
        fuse_holder_cgroup=args.fuse_holder_cgroup,
        cri_socket=args.cri_socket,
        cri_runtime_handler=args.cri_runtime_handler,
        registry_config=args.registry_config,
    )
