"""``lazyimage-operator``: the operator's entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lazyimage import names

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lazyimage-operator",
        description=(
            f"Watches {names.API_GROUP}/{names.API_VERSION} LazyImage objects and pods annotated "
            f"{names.POD_PREWARM_ANNOTATION}=true, and orders node agents to prefetch images."
        ),
    )
    parser.parse_args(argv)
    print("lazyimage-operator: the control loop is not available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
