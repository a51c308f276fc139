"""``lazyimage-operator``: the operator's entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import kopf
from lazyimage import names

from lazyimage_operator.config import OperatorConfig
from lazyimage_operator.handlers import operator_settings, register

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyimage-operator",
        description=(
            f"Watches pods annotated {names.POD_PREWARM_ANNOTATION}=true and "
            f"{names.API_GROUP}/{names.API_VERSION} LazyImage objects; orders each bound pod's "
            "node agent, through the node's LazyImageNode, to prefetch the pod's images, and "
            "folds the agents' reports into the LazyImages' status."
        ),
    )
    env = os.environ.get
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=env("KUBECONFIG") or None,
        help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)",
    )
    parser.add_argument(
        "--order-refresh",
        type=float,
        default=float(env("LAZYIMAGE_ORDER_REFRESH", "300")),
        metavar="SECONDS",
        help="re-order an image for a newly bound pod if its order is older (default 300)",
    )
    parser.add_argument(
        "--orders-per-node",
        type=int,
        default=int(env("LAZYIMAGE_ORDERS_PER_NODE", "64")),
        help="images ordered per node at most; the oldest go first (default 64, at most 256)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=float(env("LAZYIMAGE_STATUS_INTERVAL", "2")),
        metavar="SECONDS",
        help="how often each LazyImage's status is folded from the nodes' reports (default 2)",
    )
    parser.add_argument(
        "--liveness",
        default=env("LAZYIMAGE_LIVENESS") or None,
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics",
        default=env("LAZYIMAGE_METRICS") or None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (prefix lazyimage_operator_) on HOST:PORT",
    )
    parser.add_argument("--log-level", default=env("LAZYIMAGE_LOG_LEVEL", "info"))
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[OperatorConfig, str]:
    args = _parser().parse_args(argv)
    if not 1 <= args.orders_per_node <= 256:
        _parser().error("--orders-per-node must be between 1 and 256")
    if args.order_refresh <= 0 or args.status_interval <= 0:
        _parser().error("--order-refresh and --status-interval must be positive")
    config = OperatorConfig(
        kubeconfig=args.kubeconfig,
        order_refresh=timedelta(seconds=args.order_refresh),
        orders_per_node=args.orders_per_node,
        status_interval=args.status_interval,
        liveness=args.liveness,
        metrics=args.metrics,
    )
    return config, str(args.log_level).upper()


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_config(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # kopf reports every timer run and httpx every request at INFO: one line per object
        # per interval. Failures still show at WARNING and above.
        for name in ("kopf.objects", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, config)
    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,
        clusterwide=True,
        liveness_endpoint=config.liveness,
        memo=kopf.Memo(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
