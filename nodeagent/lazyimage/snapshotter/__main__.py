"""``python -m lazyimage.snapshotter --root DIR --socket PATH``: the snapshotter service alone.

It has no remote layers; every snapshot is a normal overlayfs one. Tests use it (containerd's
snapshotter test suite starts one per case), and it is handy to try the service against a
containerd by hand. It ends cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from lazyimage.logs import configure_logging
from lazyimage.snapshotter._service import serve
from lazyimage.snapshotter._snapshotter import Snapshotter


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazyimage.snapshotter", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="state directory")
    parser.add_argument("--socket", type=Path, required=True, help="unix socket to serve on")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Snapshotter(args.root) as snapshotter:
        server = serve(snapshotter, args.socket)
        try:
            stopping.wait()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
