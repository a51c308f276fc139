"""What the story prints: each pod's cold start (created to its first log line) and the bytes
the registry served for its layers, side by side."""

from __future__ import annotations

from dataclasses import dataclass

from tests.integration.node.lazypods import rfc3339_seconds

__all__ = ["PodRun", "first_line_time", "human_bytes", "side_by_side"]


@dataclass(frozen=True)
class PodRun:
    """One pod of the story, measured."""

    label: str
    created: float  # local time just before `kubectl create`, seconds since the epoch
    first_line: float  # the timestamp of its first log line, seconds since the epoch
    layer_bytes: int  # what the registry served for its image's layers
    image_bytes: int  # the image's layers, compressed

    @property
    def cold_start(self) -> float:
        return self.first_line - self.created


def first_line_time(timestamped_log: str) -> float:
    """The time of the first line of ``kubectl logs --timestamps`` output (each line is an RFC
    3339 time, a space, then the line as the container wrote it)."""
    for line in timestamped_log.splitlines():
        stamp, _, _ = line.partition(" ")
        if stamp:
            try:
                return rfc3339_seconds(stamp)
            except ValueError:
                raise ValueError(f"not a timestamped log line: {line!r}") from None
    raise ValueError("the pod logged nothing")


def human_bytes(count: int) -> str:
    """``count`` in B, KiB, MiB or GiB, three significant digits at most."""
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def side_by_side(runs: list[PodRun]) -> str:
    """A table: one row per pod, its cold start and the layer bytes the registry served."""
    header = ("pod", "cold start", "registry served for its layers")
    rows = [
        (
            run.label,
            f"{run.cold_start:.2f} s",
            f"{human_bytes(run.layer_bytes)} of {human_bytes(run.image_bytes)}"
            f" ({100 * run.layer_bytes / run.image_bytes:.0f}%)"
            if run.image_bytes
            else human_bytes(run.layer_bytes),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}".rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)
