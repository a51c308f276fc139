"""Fault matrix: a python start through the real agent while a proxy breaks its range reads.

The registry (docker-registry) sits behind ``tests.fixtures.faults.FaultProxy``. Each run
starts a fresh agent (empty cache, no background fill, the default 2 s stall timeout) that
reaches the registry only through the proxy, mounts the python image's three eStargz layers
and overlays them, then runs the python workload (``tests.images.PYTHON_PROBE_CODE``)
chrooted in the overlay: the same path as ``tests/integration/agent/test_agent_faults.py``,
without containerd. Start time: from the first mount request to the workload's first line.

Faults, each kind alone, on two targets:

- ``footer+TOC``: the first footer read and the first TOC read of each layer (6 faults);
- ``chunks``: every 4th range read after the mounts, up to ``--chunk-faults`` of them;

and one ``mixed`` run like issue 10's: the footer and TOC reads, then every 4th range read
up to ``--mixed-faults`` in all, the kinds taken in turn. A stall holds the response for
``--stall`` seconds (20, as the issue measured). A 429 asks ``Retry-After: 1``.

For each run: faults injected (proxy), what the workload saw (exit code and whether its
output is the expected one), start time against the median fault-free start, whether every
layer stayed lazy (mounted remotely, and the layer bytes the registry served against the
layers' size), and the agent's retries, hedges and chunk verification failures.

Run it with ``scripts/bench-faults [--runs N]``; it writes ``faults.md`` and ``faults.json``
to ``--out`` (default ``docs/bench``). The exit status is non-zero when something is broken
(the workload failed, a mount failed), never because a figure misses its goal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.bench.bench_fs import BenchError, _run_probe, _terminate, running_agent
from tests.bench.mounts import mount_overlay, remove_mounts
from tests.bench.report import machine_facts, print_table
from tests.fixtures.agent import AgentError
from tests.fixtures.faults import Fault, FaultProxy, FaultRule
from tests.fixtures.images import ensure_image
from tests.fixtures.registry import RegistryServer
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz, registry_bytes

GOAL_RATIO = 3.0
BLOB_GETS = r"/blobs/sha256:"
MB = 1_000_000


def kinds(stall: float) -> dict[str, Fault]:
    return {
        "5xx": Fault.status(503),
        "429 Retry-After 1": Fault.status(429, retry_after="1"),
        "reset": Fault.reset(),
        "short body": Fault.truncate(after=10),
        "stalled": Fault.stall(stall),
    }


@dataclass
class Run:
    scenario: str
    injected: int
    exit_code: int | None
    output_ok: bool
    seconds: float | None
    lazy: bool
    fetched: int
    layers_size: int
    retries: float
    hedges: float
    verification_failures: float
    error: str = ""


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for series, v in metrics.items() if series.startswith(name + "{"))


def _footer_and_toc(
    proxy: FaultProxy, image: RemoteImage, faults: Sequence[Fault]
) -> list[FaultRule]:
    """Faults on each layer's first footer read (match 1) and first TOC read (match 3: the
    footer's retry or hedge is match 2). ``faults`` are used in turn."""
    rules: list[FaultRule] = []
    for layer in image.layers:
        for nth in (1, 3):
            fault = faults[len(rules) % len(faults)]
            rules.append(proxy.add(fault, method="GET", path=layer.digest, nth=nth))
    return rules


def _every_fourth(
    proxy: FaultProxy, faults: Sequence[Fault], count: int, skip: int = 0
) -> list[FaultRule]:
    """Faults on range reads 1, 5, 9, ... from now on, ``count`` of them, ``faults`` in
    turn from number ``skip``."""
    return [
        proxy.add(faults[(k + skip) % len(faults)], method="GET", path=BLOB_GETS, nth=1 + 4 * k)
        for k in range(count)
    ]


def one_run(
    scenario: str,
    registry: RegistryServer,
    image: RemoteImage,
    base: Path,
    *,
    before: Sequence[Fault] = (),
    after_mount: tuple[Sequence[Fault], int, int] | None = None,
) -> Run:
    """``before``: faults on the footer+TOC reads, in turn; ``after_mount``: (faults,
    count, skip) on every 4th range read once the layers are mounted."""
    digests = [layer.digest for layer in image.layers]
    size = image.total_size
    with FaultProxy(registry.host) as proxy:
        rules = _footer_and_toc(proxy, image, before) if before else []
        ref = image.ref.replace(registry.host, proxy.host)
        with running_agent(base, [proxy.host]) as agent:
            registry.clear_access_log()
            run = Run(scenario, 0, None, False, None, False, 0, size, 0, 0, 0)
            try:
                started = time.perf_counter()
                mounted = [
                    agent.mount(ref, layer.digest, image.toc(layer), background=False)
                    for layer in image.layers
                ]
                if after_mount is not None:
                    rules += _every_fourth(proxy, *after_mount)
                merged = mount_overlay([Path(m["path"]) for m in reversed(mounted)], base / "root")
                first_line = _run_probe(merged)
                run.seconds = first_line - started
                run.exit_code, run.output_ok = 0, True
            except BenchError as exc:
                run.error = str(exc)[:300]
                run.exit_code = 1
            except AgentError as exc:
                run.error = f"mount refused: {exc}"[:300]
            run.fetched = registry_bytes(registry, digests)
            # Lazy: every layer a remote mount that the workload read through, and far
            # fewer bytes fetched than the layers hold.
            run.lazy = run.exit_code == 0 and run.fetched < size
            metrics = agent.metrics()
            run.retries = _sum(metrics, "lazyimage_fetch_retries_total")
            run.hedges = _sum(metrics, "lazyimage_fetch_hedges_total")
            run.verification_failures = _sum(metrics, "lazyimage_chunk_verification_failures_total")
            run.injected = sum(rule.applied for rule in rules)
    return run


def _row(run: Run, base: float) -> list[str]:
    saw = "-" if run.exit_code is None else f"exit {run.exit_code}"
    saw += ", output right" if run.output_ok else ", OUTPUT WRONG" if run.exit_code else ""
    if run.exit_code is None:
        saw = "mount failed"
    ratio = f"{run.seconds / base:.2f}x" if run.seconds is not None else "-"
    seconds = f"{run.seconds:.2f}" if run.seconds is not None else "-"
    lazy = "yes" if run.lazy else "NO"
    fetched = f"{run.fetched / MB:.1f} of {run.layers_size / MB:.1f}"
    return [
        run.scenario,
        str(run.injected),
        saw,
        seconds,
        ratio,
        lazy,
        fetched,
        f"{run.retries:g}",
        f"{run.hedges:g}",
        f"{run.verification_failures:g}",
    ]


HEADER = [
    "fault",
    "injected",
    "workload saw",
    "start s",
    "vs fault-free",
    "lazy",
    "fetched MB",
    "retries",
    "hedges",
    "unverified",
]


def _markdown(report: dict[str, Any]) -> str:
    base = report["fault_free_median_s"]
    runs = [Run(**r) for r in report["runs"]]
    lines = [
        "# Faults: a python start while the registry misbehaves",
        "",
        f"Written by `scripts/bench-faults`: the real agent (fresh state, no background fill, "
        f"2 s stall timeout) behind a fault-injecting proxy in front of docker-registry; the "
        f"python image's three eStargz layers mounted and overlaid, the python workload "
        f"chrooted in the overlay (no containerd). Start: first mount request to the "
        f"workload's first line. Fault-free: median of {report['fault_free_runs']} runs, "
        f"{base:.2f} s ({', '.join(f'{s:.2f}' for s in report['fault_free_s'])}). "
        f"One run per fault row. {report['cpus']} CPUs, kernel {report['kernel']}, "
        f"load {report['loadavg_at_start']:.2f} at start.",
        "",
        "`footer+TOC`: each layer's first footer read and first TOC read broken. `chunks`: "
        "every 4th range read after the mounts, up to "
        f"{report['chunk_faults']}. `mixed`: both, kinds in turn, up to "
        f"{report['mixed_faults']} in all. A stall holds the response {report['stall_s']:g} s. "
        "`fetched`: layer bytes the registry served (retries and hedges included) of the "
        "layers' total. `unverified`: chunks that failed their digest check (never served).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(_row(run, base)) + " |" for run in runs]
    lines += ["", "Goals (issue 10, faults keep it lazy):", ""]
    lines += [f"- {goal}" for goal in report["goals"]]
    return "\n".join(lines) + "\n"


def _goals(runs: list[Run], base: float) -> list[str]:
    broken = [r.scenario for r in runs if not r.lazy]
    slow = [
        f"{r.scenario} {r.seconds / base:.2f}x"
        for r in runs
        if r.seconds is not None and r.seconds > GOAL_RATIO * base
    ]
    worst = max((r.seconds / base for r in runs if r.seconds is not None), default=0.0)
    unverified = sum(r.verification_failures for r in runs)
    wrong = [r.scenario for r in runs if not r.output_ok]
    return [
        "stay lazy through every kind: "
        + ("MET" if not broken else f"NOT MET ({', '.join(broken)})"),
        f"within {GOAL_RATIO:g}x the fault-free time: "
        + (f"MET (worst {worst:.2f}x)" if not slow else f"NOT MET ({'; '.join(slow)})"),
        "never serve an unverified byte: "
        + (
            "MET (every workload's output right)"
            if not wrong
            else f"NOT MET (wrong or failed: {', '.join(wrong)})"
        )
        + f"; {unverified:g} chunks failed verification and were refused",
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fault-free runs (median)")
    parser.add_argument("--stall", type=float, default=20.0, help="seconds a stall holds")
    parser.add_argument("--chunk-faults", type=int, default=8, help="faults per chunks row")
    parser.add_argument("--mixed-faults", type=int, default=35, help="faults of the mixed row")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--tmp", type=Path, default=None, help="where the work dir goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if os.geteuid() != 0:
        print("bench_faults needs root (FUSE, mounts, chroot)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lazyimage-bench-faults-", dir=args.tmp))
    report: dict[str, Any] = {
        **machine_facts(),
        "stall_s": args.stall,
        "chunk_faults": args.chunk_faults,
        "mixed_faults": args.mixed_faults,
    }
    runs: list[Run] = []
    count = [0]

    def base() -> Path:
        count[0] += 1
        return work / f"run{count[0]}"

    try:
        with RegistryServer(work / "registry") as registry:
            image = push_estargz(ensure_image("python"), registry, "bench/python")
            clean = [one_run("none", registry, image, base()) for _ in range(args.runs)]
            for run in clean:
                if run.seconds is None:
                    raise BenchError(f"the fault-free start failed: {run.error}")
            fault_free = [r.seconds for r in clean if r.seconds is not None]
            median = statistics.median(fault_free)
            report["fault_free_s"] = fault_free
            report["fault_free_runs"] = args.runs
            report["fault_free_median_s"] = median
            for name, fault in kinds(args.stall).items():
                run = one_run(f"{name}, footer+TOC", registry, image, base(), before=[fault])
                runs.append(run)
                print_table("", HEADER, [_row(run, median)])
                run = one_run(
                    f"{name}, chunks",
                    registry,
                    image,
                    base(),
                    after_mount=([fault], args.chunk_faults, 0),
                )
                runs.append(run)
                print_table("", HEADER, [_row(run, median)])
            every = list(kinds(args.stall).values())
            footer_toc = 2 * len(image.layers)
            run = one_run(
                "mixed, each kind alike",
                registry,
                image,
                base(),
                before=every,
                after_mount=(every, max(0, args.mixed_faults - footer_toc), footer_toc),
            )
            runs.append(run)
            print_table("", HEADER, [_row(run, median)])
    finally:
        left = remove_mounts(work)
        if left:
            print(f"{left} mounts are still under {work}; leaving it", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["runs"] = [asdict(r) for r in runs]
    report["goals"] = _goals(runs, report["fault_free_median_s"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_table("fault matrix", HEADER, [_row(r, report["fault_free_median_s"]) for r in runs])
    for goal in report["goals"]:
        print(f"  {goal}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.md").write_text(_markdown(report))
    (args.out / "faults.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report), flush=True)
    return 1 if any(not r.output_ok or r.exit_code is None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
