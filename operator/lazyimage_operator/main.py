"""``lazyimage-operator``: the operator's entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import kopf
from lazyimage import envflags, exitcodes, names
from lazyimage.kube import KubeConfig

from lazyimage_operator.config import OperatorConfig
from lazyimage_operator.handlers import operator_settings, register

__all__ = ["build_parser", "main", "parse_config"]

logger = logging.getLogger("lazyimage_operator")


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_MAX_ORDERS_PER_NODE = 256


def _orders_per_node(text: str) -> int:
    value = envflags.positive_int(text)
    if value > _MAX_ORDERS_PER_NODE:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_ORDERS_PER_NODE}")
    return value


def _liveness_url(text: str) -> str:
    """kopf serves its probe over plain http only: ``http://HOST[:PORT]/PATH``."""
    parts = urllib.parse.urlsplit(text.strip())
    try:
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        raise argparse.ArgumentTypeError("expected http://HOST:PORT/PATH") from None
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError("expected http://HOST:PORT/PATH")
    return text.strip()


def build_parser(env: envflags.EnvDefaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyimage-operator",
        description=(
            f"Watches pods annotated {names.POD_PREWARM_ANNOTATION}=true and "
            f"{names.API_GROUP}/{names.API_VERSION} LazyImage objects; orders each bound pod's "
            "node agent, through the node's LazyImageNode, to prefetch the pod's images, and "
            "folds the agents' reports into the LazyImages' status."
        ),
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: the files of $KUBECONFIG, merged as kubectl merges "
        "them, else the in-cluster service account, else ~/.kube/config)",
    )
    parser.add_argument(
        "--order-refresh",
        type=envflags.positive_float,
        default=env("LAZYIMAGE_ORDER_REFRESH", envflags.positive_float, 300.0),
        metavar="SECONDS",
        help="re-order an image for a newly bound pod if its order is older (default 300; "
        "LAZYIMAGE_ORDER_REFRESH)",
    )
    parser.add_argument(
        "--orders-per-node",
        type=_orders_per_node,
        default=env("LAZYIMAGE_ORDERS_PER_NODE", _orders_per_node, 64),
        help="images ordered per node at most; the oldest go first (default 64, at most 256; "
        "LAZYIMAGE_ORDERS_PER_NODE)",
    )
    parser.add_argument(
        "--status-interval",
        type=envflags.positive_float,
        default=env("LAZYIMAGE_STATUS_INTERVAL", envflags.positive_float, 2.0),
        metavar="SECONDS",
        help="how often each LazyImage's status is folded from the nodes' reports (default 2; "
        "LAZYIMAGE_STATUS_INTERVAL)",
    )
    parser.add_argument(
        "--lazy-runtime-class",
        action="append",
        default=None,
        metavar="NAME",
        help="prewarm only pods of this RuntimeClass (repeatable), the ones whose pulls are "
        "lazy; without it every annotated pod (LAZYIMAGE_LAZY_RUNTIME_CLASSES, comma-separated)",
    )
    parser.add_argument(
        "--liveness",
        type=_liveness_url,
        default=env("LAZYIMAGE_LIVENESS", _liveness_url, None),
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz (LAZYIMAGE_LIVENESS)",
    )
    parser.add_argument(
        "--metrics",
        type=envflags.host_port,
        default=env("LAZYIMAGE_METRICS", envflags.host_port, None),
        metavar="HOST:PORT",
        help="serve Prometheus metrics (prefix lazyimage_operator_) on HOST:PORT "
        "(LAZYIMAGE_METRICS)",
    )
    parser.add_argument(
        "--log-level",
        type=envflags.choice(*_LOG_LEVELS),
        default=env("LAZYIMAGE_LOG_LEVEL", envflags.choice(*_LOG_LEVELS), "info"),
        help=f"one of {', '.join(_LOG_LEVELS)} (default info; LAZYIMAGE_LOG_LEVEL)",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[OperatorConfig, str]:
    """The operator's configuration and log level; a bad flag or variable exits with code 2
    and its name, before anything starts."""
    defaults = envflags.EnvDefaults(os.environ if env is None else env)
    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    if defaults.problems:
        parser.error("; ".join(defaults.problems))
    config = OperatorConfig(
        kubeconfig=args.kubeconfig,
        order_refresh=timedelta(seconds=args.order_refresh),
        orders_per_node=args.orders_per_node,
        status_interval=args.status_interval,
        lazy_runtime_classes=frozenset(
            args.lazy_runtime_class
            if args.lazy_runtime_class is not None
            else [
                name.strip()
                for name in defaults.text("LAZYIMAGE_LAZY_RUNTIME_CLASSES").split(",")
                if name.strip()
            ]
        ),
        liveness=args.liveness,
        metrics=args.metrics,
    )
    return config, str(args.log_level).upper()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator; the exit code says how it ended (README, "Prewarm: the operator")."""
    config, level = parse_config(argv)  # a bad flag or LAZYIMAGE_* variable exits here with 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # kopf reports every timer run and httpx every request at INFO: one line per object
        # per interval. Failures still show at WARNING and above.
        for name in ("kopf.objects", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        # Loaded before kopf starts, so that a kubeconfig that cannot be loaded stops the
        # operator with one line and exit code 7, rather than a startup handler retrying.
        kube = KubeConfig.load(config.kubeconfig)
        logger.info("API server %s, credentials from %s", kube.server, kube.source)
        registry = kopf.OperatorRegistry()
        register(registry, config, kube)
        kopf.run(
            registry=registry,
            settings=operator_settings(),
            standalone=True,
            clusterwide=True,
            liveness_endpoint=config.liveness,
            memo=kopf.Memo(),
        )
    except Exception as exc:  # the last line of defence: a message, never a bare traceback
        code = exitcodes.exit_code_for(exc)
        if code == exitcodes.INTERNAL:
            logger.exception("the operator failed")
        else:
            logger.error(
                "the operator failed (exit code %d): %s", code, exitcodes.error_message(exc)
            )
        return code
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
