"""``python -m tests.story``: the story, then its teardown whatever happened."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import structlog
from lazyimage.fusefs import mounts_under

from tests.story.phases import Steps
from tests.story.story import Story


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (the bound `timeout` puts on the whole story)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run the whole story on this machine: a registry, the images, a one-node "
        "cluster with the chart installed, a prewarmed lazy pod and a full pull side by side; "
        "then tear it all down.",
    ).parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/demo: run it as root (it starts containerd, kubelet and FUSE mounts)")
        return 2
    # The teardown aborts the agent's leftover FUSE connections on purpose: no warning for it.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    workdir = Path(tempfile.mkdtemp(prefix="lazyimage-demo-"))
    steps = Steps()
    story = Story(workdir, steps)
    steps.say(f"{steps.clock()} working in {workdir}")
    failure: BaseException | None = None
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        story.run()
    except (Exception, KeyboardInterrupt) as exc:
        failure = exc
    finally:
        # The teardown runs to its end: a second Ctrl-C only says so.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: steps.say("    tearing down; please wait"))
        if failure is not None:
            what = "interrupted" if isinstance(failure, KeyboardInterrupt) else "failed"
            steps.say(f"\nscripts/demo {what}: {failure}\ntearing down")
            story.keep_logs(failure)
        problems = story.teardown()
    for problem in problems:
        steps.say(f"teardown: {problem}")
    if failure is None and not problems and not mounts_under(workdir):
        shutil.rmtree(workdir)
        steps.say(f"{steps.clock()} done; everything it started is gone")
        return 0
    steps.say(f"logs kept in {workdir} (failure.txt, node/, registry/, agent.log, operator.log)")
    return 130 if isinstance(failure, KeyboardInterrupt) else 1


if __name__ == "__main__":
    sys.exit(main())
