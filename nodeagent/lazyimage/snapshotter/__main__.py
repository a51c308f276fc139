"""``python -m lazyimage.snapshotter --root DIR --socket PATH``: the snapshotter service alone.

It has no remote layers; every snapshot is a normal overlayfs one. Tests use it (containerd's
snapshotter test suite starts one per case), and it is handy to try the service against a
containerd by hand. It ends cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from pathlib import Path

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

    # Block the stop signals in every thread (the server's threads inherit the mask) and wait for
    # them synchronously. A handler that set a threading.Event could deadlock on the
    # Event's own lock if the signal landed while the main thread held it.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with Snapshotter(args.root) as snapshotter:
        server = serve(snapshotter, args.socket)
        try:
            signal.sigwait(stop_signals)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
