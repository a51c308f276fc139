"""The cold-start benchmark's report: medians and ratios, printed tables, a Markdown table, the
JSON figures and a PNG plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.bench.report import print_table

__all__ = [
    "LAZYIMAGE",
    "LAZYIMAGE_NO_ZONE",
    "ON_DISK",
    "OVERLAYFS",
    "PREWARMED",
    "REFERENCE",
    "REFERENCE_NO_ZONE",
    "SIDES",
    "TARGETS",
    "Target",
    "print_tables",
    "summarize",
    "targets",
    "write",
]

OVERLAYFS = "overlayfs"
REFERENCE = "reference"
LAZYIMAGE = "lazyimage"
PREWARMED = "lazyimage, prewarmed"
ON_DISK = "on disk"
# The same eStargz conversion without a priority zone: what a start costs that only the read
# pattern can speed up (an image nobody optimized, or a working set no learner saw).
REFERENCE_NO_ZONE = "reference, no zone"
LAZYIMAGE_NO_ZONE = "lazyimage, no zone"
SIDES = (
    OVERLAYFS,
    REFERENCE,
    LAZYIMAGE,
    PREWARMED,
    ON_DISK,
    REFERENCE_NO_ZONE,
    LAZYIMAGE_NO_ZONE,
)


@dataclass(frozen=True)
class Target:
    """One comparison of docs/targets.md: ``side`` against ``base`` on ``metric`` (a figure
    where less is better). ``goal`` is the least base/side ratio that meets it: 2.0 means
    twice as fast, 1/1.5 means at most 1.5 times the base's figure. ``workloads``: the
    workloads it applies to, all if empty."""

    label: str
    base: str
    side: str
    goal: float
    metric: str = "median_s"
    workloads: tuple[str, ...] = ()


# The small-working-set images, where lazy pulling should win outright.
_STARTUP_WORKLOADS = ("python", "numpy")
TARGETS = (
    Target("lazyimage vs overlayfs", OVERLAYFS, LAZYIMAGE, 4.0, workloads=_STARTUP_WORKLOADS),
    # A start that reads most of a large layer: never slower than pulling it whole, whether
    # the working set is in the priority zone or only the read pattern shows it.
    Target("lazyimage vs overlayfs", OVERLAYFS, LAZYIMAGE, 1.0, workloads=("dataset",)),
    Target(
        "lazyimage, no zone vs overlayfs", OVERLAYFS, LAZYIMAGE_NO_ZONE, 1.0, workloads=("dataset",)
    ),
    Target("lazyimage vs reference", REFERENCE, LAZYIMAGE, 1.2),
    Target("lazyimage, no zone vs reference, no zone", REFERENCE_NO_ZONE, LAZYIMAGE_NO_ZONE, 1.2),
    Target("prewarmed vs on disk", ON_DISK, PREWARMED, 1 / 1.2),
    Target("lazyimage peak RSS vs reference", REFERENCE, LAZYIMAGE, 1 / 1.5, "peak_rss_bytes"),
)


class SampleLike(Protocol):
    @property
    def seconds(self) -> float: ...
    @property
    def pull_seconds(self) -> float: ...
    @property
    def fetched(self) -> int: ...
    @property
    def peak_rss(self) -> int: ...
    @property
    def steps(self) -> Mapping[str, float]: ...


Summary = dict[str, dict[str, dict[str, dict[str, Any]]]]  # workload -> link -> side -> figures


def summarize(results: Mapping[str, Mapping[str, Mapping[str, Sequence[SampleLike]]]]) -> Summary:
    summary: Summary = {}
    for workload, links in results.items():
        for link, sides in links.items():
            figures: dict[str, dict[str, Any]] = {}
            for side, samples in sides.items():
                if not samples:
                    continue
                seconds = [s.seconds for s in samples]
                figures[side] = {
                    "median_s": statistics.median(seconds),
                    "min_s": min(seconds),
                    "max_s": max(seconds),
                    "runs_s": seconds,
                    "pull_s": statistics.median(s.pull_seconds for s in samples),
                    "fetched_bytes": int(statistics.median(s.fetched for s in samples)),
                    "peak_rss_bytes": int(statistics.median(s.peak_rss for s in samples)),
                    "steps_s": {
                        step: statistics.median(s.steps.get(step, 0.0) for s in samples)
                        for step in samples[0].steps
                        if step != "wait"
                    },
                }
            if figures:
                summary.setdefault(workload, {})[link] = figures
    return summary


def targets(workload: str, figures: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each target of docs/targets.md this workload's figures on one link can answer: the
    ratio (``speedup``: the base's figure over the side's, 2.0 when the side takes half the
    time), and whether it is met."""
    found = []
    for target in TARGETS:
        if target.workloads and workload not in target.workloads:
            continue
        base, side = figures.get(target.base, {}), figures.get(target.side, {})
        if base.get(target.metric, 0) > 0 and side.get(target.metric, 0) > 0:
            speedup = base[target.metric] / side[target.metric]
            found.append(
                {
                    "target": target.label,
                    "speedup": speedup,
                    "goal": target.goal,
                    "metric": target.metric,
                    "met": speedup >= target.goal,
                }
            )
    return found


def _target_text(target: Mapping[str, Any]) -> str:
    what = "the time" if target.get("metric", "median_s") == "median_s" else "the memory"
    if target["goal"] < 1:
        value = f"{1 / target['speedup']:.2f}x {what}"
        goal = f"{1 / target['goal']:.1f}x {what} at most"
    elif target["goal"] == 1:
        value = f"{target['speedup']:.2f}x faster"
        goal = "no slower"
    else:
        value = f"{target['speedup']:.2f}x faster"
        goal = f"{target['goal']:.1f}x faster"
    return f"{target['target']}: {value} (target {goal}) {'MET' if target['met'] else 'NOT MET'}"


def _rows(figures: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    overlay = figures.get(OVERLAYFS, {}).get("median_s")
    reference = figures.get(REFERENCE, {}).get("median_s")
    rows = []
    for side, f in figures.items():
        median = f["median_s"]
        rows.append(
            [
                side,
                f"{median:.2f}",
                f"{f['min_s']:.2f}-{f['max_s']:.2f}",
                f"{overlay / median:.2f}x" if overlay and median else "-",
                f"{reference / median:.2f}x" if reference and median else "-",
                f"{f['fetched_bytes'] / 1e6:,.1f}",
                f"{f['peak_rss_bytes'] / 2**20:.0f}" if f["peak_rss_bytes"] else "-",
            ]
        )
    return rows


_STEPS = ("pull", "sandbox", "create", "start", "first output")


def _step_rows(figures: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [
        [side, *(f"{f['steps_s'].get(step, 0.0):.2f}" for step in _STEPS)]
        for side, f in figures.items()
    ]


_STEP_HEADER = ["side (median s of each CRI step)", *_STEPS]

_HEADER = [
    "side",
    "median s",
    "min-max s",
    "vs overlayfs",
    "vs reference",
    "fetched MB",
    "peak RSS MiB",
]


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def print_tables(summary: Summary, runs: int) -> None:
    for workload, links in summary.items():
        for link, figures in links.items():
            print_table(
                f"cold start, {workload} image over {link}: PullImage to first output, "
                f"median of {_runs(runs)}",
                _HEADER,
                _rows(figures),
            )
            for target in targets(workload, figures):
                print(f"  {_target_text(target)}", flush=True)
            print_table("", _STEP_HEADER, _step_rows(figures))


def _markdown(summary: Summary, report: Mapping[str, Any]) -> str:
    lines = [
        "# Cold start: PullImage to the container's first line of output",
        "",
        f"Written by `scripts/bench-coldstart`: {_runs(report['runs'])} of each side, medians; "
        f"a fresh containerd 1.6 and snapshotter each run; {report['cpus']} CPUs, "
        f"kernel {report['kernel']}. `vs` columns: how many times faster than that side. "
        "`fetched`: layer bytes the registry served during the run. `peak RSS`: the "
        "snapshotter process (the agent, run with its runtime dependencies only, as its image "
        "has them; the reference's `containerd-stargz-grpc`).",
        "",
    ]
    for workload, links in summary.items():
        image = report.get("images", {}).get(workload, {})
        for link, figures in links.items():
            lines.append(f"## {workload} over {link}")
            lines.append("")
            if image:
                lines.append(
                    f"Image: {image['layers']} layers, gzip {image['gzip_bytes'] / 1e6:,.1f} MB, "
                    f"eStargz {image['estargz_bytes'] / 1e6:,.1f} MB, priority zones "
                    f"{image['priority_zone_bytes'] / 1e6:,.1f} MB."
                )
                lines.append("")
            lines.append("| " + " | ".join(_HEADER) + " |")
            lines.append("|" + "|".join("---" for _ in _HEADER) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in _rows(figures)]
            lines.append("")
            lines += [f"- {_target_text(t)}" for t in targets(workload, figures)]
            lines.append("")
            lines.append("| " + " | ".join(_STEP_HEADER) + " |")
            lines.append("|" + "|".join("---" for _ in _STEP_HEADER) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in _step_rows(figures)]
            lines.append("")
    return "\n".join(lines)


def _plot(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(w, link, f) for w, links in summary.items() for link, f in links.items()]
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 2.8 * rows), squeeze=False)
    colours = {
        OVERLAYFS: "#8c8c8c",
        REFERENCE: "#d98c3a",
        LAZYIMAGE: "#2f6db5",
        PREWARMED: "#5aa05a",
        ON_DISK: "#c8c8c8",
        REFERENCE_NO_ZONE: "#e8b090",
        LAZYIMAGE_NO_ZONE: "#90b0e0",
    }
    for ax, (workload, link, figures) in zip(axes.flat, panels, strict=False):
        sides = sorted(figures, key=lambda s: SIDES.index(s) if s in SIDES else len(SIDES))
        medians = [figures[s]["median_s"] for s in sides]
        low = [m - figures[s]["min_s"] for s, m in zip(sides, medians, strict=True)]
        high = [figures[s]["max_s"] - m for s, m in zip(sides, medians, strict=True)]
        positions = list(range(len(sides)))[::-1]
        ax.barh(
            positions,
            medians,
            xerr=[low, high],
            color=[colours.get(s, "#444444") for s in sides],
            capsize=3,
        )
        ax.set_yticks(positions, sides)
        ax.set_title(f"{workload} over {link}", fontsize=10)
        ax.set_xlabel("seconds, PullImage to first output (median, min-max)")
        for y, side, value in zip(positions, sides, medians, strict=True):
            # Right of the range bar, so the whisker never covers the figure.
            ax.text(figures[side]["max_s"], y, f"  {value:.2f} s", va="center", fontsize=8)
        ax.set_xlim(0, max(figures[s]["max_s"] for s in sides) * 1.25)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(summary: Summary, report: Mapping[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table, figures, plot = out / "coldstart.md", out / "coldstart.json", out / "coldstart.png"
    table.write_text(_markdown(summary, report))
    figures.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    _plot(summary, plot)
    return [table, figures, plot]
