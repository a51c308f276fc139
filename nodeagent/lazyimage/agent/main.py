"""``lazyimage-agent``: the node agent's entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lazyimage.agent.config import parse_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    # The filesystem and snapshotter services are not wired in yet; say so rather than idle.
    print(
        f"lazyimage-agent: serving is not available in this version "
        f"(state {config.state_dir}, socket {config.socket}); see --help",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
