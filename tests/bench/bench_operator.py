"""Operator scale benchmark: from a pod's binding to its node's prefetch order, at 1,000 nodes and
10,000 pods, against a real etcd and kube-apiserver (``tests.fixtures.kube.KubeCluster``).

DESIGN §5 target: from binding to the agent starting its prefetch, p99 under 1 s at 1,000 nodes
and 10,000 pods, with operator memory under 300 MB. This measures the operator's part of it: a
pod is created already bound (``spec.nodeName`` set, as the scheduler would bind it) and the
clock stops when the order for each of its images shows up in a watch on ``lazyimagenodes``,
which is what a node's agent watches. No kubelet and no scheduler: pods stay Pending.

Method, per run:

1. Node objects (``--nodes``) exist before the operator starts; a warm-up pod proves it is
   watching. Every run uses its own image tags, so every (node, image) pair needs a new order.
2. Pods (``--pods``) are POSTed by ``--creators`` concurrent tasks, as fast as the apiserver
   takes them or paced at ``--rate`` pods/s. Pod ``i`` goes to node ``i % nodes``; each node
   runs a few apps (``--apps-per-node``) of 1-3 containers drawn from ``--images`` images, so
   most pairs are needed by several pods and the "already ordered" path is exercised too.
3. A watch on ``lazyimagenodes`` records when each (node, image) order first appears.
   Latency of a pair = that moment - the completion of the first pod POST that needed it. The
   order's ``issuedAt`` (the operator's clock when it decided) splits it into reaction (pod
   event to decision) and write (decision to the order reaching a watcher).
4. After the last pod, stragglers get ``--settle`` seconds; orders still missing then are
   failures.

CPU seconds (utime + stime from /proc) and RSS (VmRSS, peak VmHWM) of the operator, the
apiserver and etcd are read around the run; everything shares the machine's cores with this
process, which creates the pods and watches the orders.

Run it with ``scripts/bench-operator [--nodes N] [--pods N] [--images N] [--rate PODS_PER_S]
[--runs N]``. It prints its tables and writes ``operator.md`` and ``operator.json`` to ``--out``
(default ``docs/bench``). The exit status is non-zero when something measured is broken (the
operator died, pods could not be created, orders never came), never because a figure misses
its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from lazyimage import names
from lazyimage.kube import (
    ConflictError,
    GoneError,
    KubeClient,
    KubeConfig,
    KubeError,
    NotFoundError,
    ResourcePath,
)
from lazyimage_operator.naming import canonical_image

from tests.bench.report import machine_facts, print_table
from tests.fixtures.kube import KubeCluster
from tests.fixtures.operator import CRDS, OperatorProcess

NODES = ResourcePath("", "v1", "nodes")
NAMESPACES = ResourcePath("", "v1", "namespaces")
LAZYIMAGE_NODES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_NODE_PLURAL)
TARGET_P99 = 1.0  # seconds, DESIGN §5
TARGET_RSS = 300 * 1_000_000  # bytes, DESIGN §5
MB = 1_000_000
REGISTRY = "reg.example:5000"

_WARMUP_TIMEOUT = 180.0
_POST_ATTEMPTS = 5
_SAMPLE_INTERVAL = 1.0
_PROGRESS_INTERVAL = 5.0
_LAG_TICK = 0.01
_BUCKETS = 10


class BenchError(RuntimeError):
    """Something the benchmark measures is broken (not merely slow)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like an exception, so every cleanup runs.
    raise SystemExit(128 + signum)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """One reading of a process: CPU seconds so far, RSS now and at its peak (bytes)."""

    cpu: float
    rss: int
    hwm: int


def read_usage(pid: int) -> Usage | None:
    """The process's usage from /proc, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name (which may hold spaces) start at field 3, state.
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    memory = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
    return Usage(cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def control_plane_pids(cluster: KubeCluster) -> dict[str, int]:
    """``{"apiserver": pid, "etcd": pid}``, told apart by their command names."""
    found: dict[str, int] = {}
    for pid in cluster.pids:
        comm = _comm(pid)
        if comm.startswith("kube-apiserver"):
            found["apiserver"] = pid
        elif comm.startswith("etcd"):
            found["etcd"] = pid
    return found


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sampler:
    """Reads the processes' usage every second: progress lines and the peaks over a run."""

    pids: dict[str, int]
    samples: dict[str, list[tuple[float, Usage]]] = field(default_factory=dict)

    def read(self) -> dict[str, Usage]:
        now = time.time()
        current = {}
        for name, pid in self.pids.items():
            usage = read_usage(pid)
            if usage is not None:
                current[name] = usage
                self.samples.setdefault(name, []).append((now, usage))
        return current

    async def run(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(_SAMPLE_INTERVAL)

    def peak_rss(self, name: str) -> int:
        return max((usage.rss for _, usage in self.samples.get(name, [])), default=0)

    def cpu_percent_series(self, name: str) -> list[tuple[float, float, int]]:
        """(time, CPU % over the previous interval, RSS) for each sample after the first."""
        series = self.samples.get(name, [])
        return [
            (t1, 100 * (u1.cpu - u0.cpu) / (t1 - t0), u1.rss)
            for (t0, u0), (t1, u1) in itertools.pairwise(series)
            if t1 > t0
        ]


class LoopLag:
    """How late a 10 ms sleep wakes up: the benchmark's own event loop delay, which would
    otherwise hide inside the measured latencies."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(_LAG_TICK)
            self.lags.append(max(0.0, loop.time() - began - _LAG_TICK))


# -- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodPlan:
    name: str
    node: str
    images: tuple[str, ...]

    def body(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "annotations": {names.POD_PREWARM_ANNOTATION: "true"},
            },
            "spec": {
                "nodeName": self.node,
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {"name": f"c{index}", "image": image} for index, image in enumerate(self.images)
                ],
            },
        }


def node_names(count: int) -> list[str]:
    width = len(str(max(count - 1, 0)))
    return [f"node-{index:0{width}d}" for index in range(count)]


def app_images(app: int, images: int, tag: str) -> tuple[str, ...]:
    """App ``app`` runs 1-3 containers; neighbouring apps share images, as sidecars do."""
    picks = [app % images, (app + 7) % images, (app + 13) % images][: 1 + app % 3]
    unique = list(dict.fromkeys(picks))
    return tuple(f"{REGISTRY}/app-{pick}:{tag}" for pick in unique)


def plan_pods(
    nodes: Sequence[str], pods: int, images: int, apps_per_node: int, tag: str, seed: int
) -> list[PodPlan]:
    rng = random.Random(seed)
    apps = images  # as many apps as images; each uses 1-3 of them
    node_apps = [rng.sample(range(apps), min(apps_per_node, apps)) for _ in nodes]
    width = len(str(max(pods - 1, 0)))
    plans = []
    for index in range(pods):
        slot = index % len(nodes)
        app = rng.choice(node_apps[slot])
        plans.append(PodPlan(f"pod-{index:0{width}d}", nodes[slot], app_images(app, images, tag)))
    return plans


# -- the watch on the orders -------------------------------------------------------------------


@dataclass
class OrderSeen:
    """The first sight of a (node, image) order: when it came, and its ``issuedAt``."""

    seen: float
    issued: float | None


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


class OrderWatch:
    """Lists and watches every LazyImageNode, recording each order's first sight."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self.first: dict[tuple[str, str], OrderSeen] = {}
        self._issued: dict[tuple[str, str], str] = {}
        self.events = 0  # ADDED and MODIFIED: each is one write of a node's orders
        self.reissued = 0  # an order seen again with a newer issuedAt
        self.errors: list[str] = []
        self.listed = asyncio.Event()

    def _record(self, obj: Mapping[str, Any], now: float) -> None:
        node = str(obj.get("metadata", {}).get("name", ""))
        for order in (obj.get("spec") or {}).get("orders") or []:
            key = (node, str(order.get("image", "")))
            issued = str(order.get("issuedAt", ""))
            if key not in self.first:
                self.first[key] = OrderSeen(now, _epoch(issued))
            elif self._issued.get(key) != issued:
                self.reissued += 1
            self._issued[key] = issued

    async def run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self._client.list(LAZYIMAGE_NODES)
                    now = time.time()
                    for item in listing.get("items") or []:
                        self._record(item, now)
                    version = str(listing["metadata"]["resourceVersion"])
                    self.listed.set()
                events = self._client.watch(LAZYIMAGE_NODES, resource_version=version)
                async with aclosing(events) as stream:
                    async for event in stream:
                        version = event.resource_version or version
                        if event.type in ("ADDED", "MODIFIED"):
                            self.events += 1
                            self._record(event.object, time.time())
            except GoneError:
                version = None
            except KubeError as exc:
                self.errors.append(str(exc)[:300])
                await asyncio.sleep(0.5)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least ``pct`` % of the values at or below."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
    }


def _ms(value: Any) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value * 1000:.0f}")
    )


def _mb(value: float) -> str:
    return f"{value / MB:.0f}"


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: KubeCluster
    config: KubeConfig
    nodes: list[str]
    operator: OperatorProcess | None = None
    pids: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message if len(message) < 600 else message[:600] + " ...")
        _log(f"FAILED {message}")

    def check_operator(self) -> None:
        if self.operator is not None and not self.operator.running():
            raise BenchError(
                f"the operator exited with {self.operator.proc.returncode}; its log ends:\n"
                f"{self.operator_log()}"
            )

    def operator_log(self) -> str:
        return self.operator.log()[-3000:] if self.operator is not None else ""


async def _post(client: KubeClient, path: ResourcePath, body: dict[str, Any]) -> bool:
    """Create ``body``; retry what waiting can fix. True once stored, also if it already was."""
    for attempt in range(_POST_ATTEMPTS):
        try:
            await client.create(path, body)
            return True
        except ConflictError:
            return True  # an earlier attempt got through after all
        except KubeError as exc:
            retryable = exc.status is None or exc.status == 429 or exc.status >= 500
            if not retryable or attempt + 1 == _POST_ATTEMPTS:
                _log(f"POST {path.collection()}: {exc}")
                return False
            await asyncio.sleep(0.2 * 2**attempt)
    return False


async def create_nodes(bench: Bench) -> None:
    started = time.monotonic()
    queue = iter(enumerate(bench.nodes))
    failed: list[str] = []

    async def creator(client: KubeClient) -> None:
        for index, name in queue:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"pool": f"pool-{index % 10}", "kubernetes.io/hostname": name},
                },
            }
            if not await _post(client, NODES, body):
                failed.append(name)

    async with KubeClient(bench.config) as client, asyncio.TaskGroup() as group:
        for _ in range(bench.args.creators):
            group.create_task(creator(client))
    if failed:
        raise BenchError(f"{len(failed)} nodes could not be created, e.g. {failed[:3]}")
    _log(f"{len(bench.nodes)} nodes created in {time.monotonic() - started:.1f} s")


async def ensure_namespace(client: KubeClient, name: str) -> None:
    if not await _post(client, NAMESPACES, {"metadata": {"name": name}}):
        raise BenchError(f"namespace {name} could not be created")


async def warm_up(bench: Bench) -> float:
    """One pod, and the wait for its order: the operator is up and watching. Seconds taken."""
    started = time.monotonic()
    node, image = bench.nodes[0], f"{REGISTRY}/warmup:1"
    async with KubeClient(bench.config) as client:
        await ensure_namespace(client, "bench-warmup")
        pods = ResourcePath("", "v1", "pods", "bench-warmup")
        if not await _post(client, pods, PodPlan("warmup", node, (image,)).body("bench-warmup")):
            raise BenchError("the warm-up pod could not be created")
        while time.monotonic() - started < _WARMUP_TIMEOUT:
            bench.check_operator()
            with contextlib.suppress(NotFoundError):
                obj = await client.get(LAZYIMAGE_NODES, node)
                if any(o.get("image") == image for o in obj.get("spec", {}).get("orders") or []):
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise BenchError(
        f"no order for the warm-up pod after {_WARMUP_TIMEOUT:.0f} s; operator log:\n"
        f"{bench.operator_log()}"
    )


@dataclass
class Creation:
    done: list[float | None]
    started: float = 0.0
    created: int = 0
    failed: int = 0
    round_trips: list[float] = field(default_factory=list)  # of each pod POST, retries included


async def create_pods(
    bench: Bench, client: KubeClient, namespace: str, plans: Sequence[PodPlan], state: Creation
) -> None:
    """POST every pod with a few concurrent creators, paced at ``--rate`` if given."""
    path = ResourcePath("", "v1", "pods", namespace)
    queue = iter(enumerate(plans))
    rate: float | None = bench.args.rate
    state.started = time.time()
    began = time.monotonic()

    async def creator() -> None:
        for index, plan in queue:
            if rate:
                delay = began + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.time()
            if await _post(client, path, plan.body(namespace)):
                state.done[index] = time.time()
                state.round_trips.append(state.done[index] - sent)
                state.created += 1
            else:
                state.failed += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(bench.args.creators):
            group.create_task(creator())


def first_needed(
    plans: Sequence[PodPlan], done: Sequence[float | None]
) -> dict[tuple[str, str], float]:
    """For each (node, image) pair, when the first pod that needed it was created."""
    first: dict[tuple[str, str], float] = {}
    for plan, when in zip(plans, done, strict=True):
        if when is None:
            continue
        for image in plan.images:
            key = (plan.node, canonical_image(image))
            if key not in first or when < first[key]:
                first[key] = when
    return first


async def progress(
    bench: Bench,
    run: int,
    plans: Sequence[PodPlan],
    state: Creation,
    watch: OrderWatch,
    sampler: Sampler,
) -> None:
    while True:
        await asyncio.sleep(_PROGRESS_INTERVAL)
        needed = first_needed(plans, state.done)
        seen = sum(1 for key in needed if key in watch.first)
        elapsed = max(time.time() - state.started, 1e-9)
        operator = sampler.samples.get("operator") or []
        rss = operator[-1][1].rss if operator else 0
        cpu = sampler.cpu_percent_series("operator")
        _log(
            f"run {run + 1}/{bench.args.runs}: pods {state.created}/{len(plans)} "
            f"({state.created / elapsed:.0f}/s), orders {seen}/{len(needed)}, "
            f"operator {rss / MB:.0f} MB, {cpu[-1][1] if cpu else 0:.0f}% CPU"
        )


def _usage_delta(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, float]:
    return {name: after[name].cpu - before[name].cpu for name in after if name in before}


async def one_run(bench: Bench, run: int) -> dict[str, Any]:
    args = bench.args
    tag = str(run + 1)
    namespace = f"bench-operator-r{run + 1}"
    plans = plan_pods(bench.nodes, args.pods, args.images, args.apps_per_node, tag, args.seed + run)
    state = Creation(done=[None] * len(plans))
    sampler = Sampler(dict(bench.pids))
    lag = LoopLag()
    async with KubeClient(bench.config) as writer, KubeClient(bench.config) as reader:
        await ensure_namespace(writer, namespace)
        watch = OrderWatch(reader)
        background = [
            asyncio.create_task(watch.run()),
            asyncio.create_task(sampler.run()),
            asyncio.create_task(lag.run()),
        ]
        try:
            await asyncio.wait_for(watch.listed.wait(), 60)
            bench.check_operator()
            before = sampler.read()
            self_before, machine_before = _self_cpu(), machine_cpu()
            profiler = start_profiler(bench, run)
            background.append(
                asyncio.create_task(progress(bench, run, plans, state, watch, sampler))
            )
            try:
                async with asyncio.timeout(args.max_seconds):
                    await create_pods(bench, writer, namespace, plans, state)
            except TimeoutError:
                bench.fail(f"run {run + 1}: pods not all created within {args.max_seconds} s")
            created_at = time.time()
            bench.check_operator()
            needed = first_needed(plans, state.done)
            # Stragglers: wait for every needed order, up to --settle seconds.
            while time.time() - created_at < args.settle:
                if all(key in watch.first for key in needed):
                    break
                await asyncio.sleep(0.05)
            settled = time.time() - created_at
            after = sampler.read()
            self_cpu, machine = _self_cpu() - self_before, machine_cpu() - machine_before
            stop_profiler(profiler)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    bench.check_operator()

    creation_window = max((t for t in state.done if t is not None), default=state.started)
    creation_seconds = max(creation_window - state.started, 1e-9)
    latencies, reactions, writes = [], [], []
    missing: list[str] = []
    buckets: list[list[float]] = [[] for _ in range(_BUCKETS)]
    for key, needed_at in sorted(needed.items(), key=lambda item: item[1]):
        seen = watch.first.get(key)
        if seen is None:
            missing.append(f"{key[0]} {key[1]}")
            continue
        latency = seen.seen - needed_at
        latencies.append(latency)
        position = (needed_at - state.started) / creation_seconds
        buckets[min(_BUCKETS - 1, max(0, int(position * _BUCKETS)))].append(latency)
        if seen.issued is not None:
            reactions.append(seen.issued - needed_at)
            writes.append(seen.seen - seen.issued)
    if state.failed:
        bench.fail(f"run {run + 1}: {state.failed} pods could not be created")
    if missing:
        bench.fail(f"run {run + 1}: {len(missing)} orders missing after {args.settle} s")
    if watch.errors:
        _log(f"the order watch failed {len(watch.errors)} times, e.g. {watch.errors[0]}")

    cpu = _usage_delta(before, after)
    cpu["benchmark"] = self_cpu
    # Whatever else ran on the machine meanwhile (other work on a shared machine shows here).
    cpu["others"] = max(0.0, machine - sum(cpu.values()))
    operator_series = sampler.cpu_percent_series("operator")
    return {
        "run": run + 1,
        "namespace": namespace,
        "pods": len(plans),
        "pods_created": state.created,
        "pods_failed": state.failed,
        "pod_images": sum(len(plan.images) for plan in plans),
        "creation_seconds": creation_seconds,
        "creation_rate": state.created / creation_seconds,
        "pairs": len(needed),
        "orders_seen": len(latencies),
        "orders_missing": len(missing),
        "missing_examples": missing[:10],
        "settle_seconds": settled,
        "node_writes": watch.events,
        "orders_reissued": watch.reissued,
        "watch_errors": len(watch.errors),
        "latency": summarize(latencies),
        "reaction": summarize(reactions),
        "write": summarize(writes),
        "latency_by_tenth": [summarize(bucket) for bucket in buckets],
        "cpu_seconds": cpu,
        "cpu_share": {name: value / (settled + creation_seconds) for name, value in cpu.items()},
        "rss": {
            name: {"final": usage.rss, "peak_sampled": sampler.peak_rss(name), "hwm": usage.hwm}
            for name, usage in after.items()
        },
        "operator_cpu_percent_max": max((pct for _, pct, _ in operator_series), default=0.0),
        "loop_lag": summarize(lag.lags),
        "pod_post_seconds": summarize(state.round_trips),
        "operator_series": [
            [round(t - state.started, 1), round(pct, 1), rss] for t, pct, rss in operator_series
        ],
    }


# -- reports -----------------------------------------------------------------------------------

_RESULT_HEADER = (
    "run", "pods/s", "pairs", "p50 ms", "p90 ms", "p99 ms", "max ms", "missing",
    "op CPU s", "op peak MB", "apiserver MB",
)  # fmt: skip


def result_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in runs:
        latency, rss = result["latency"], result["rss"]
        rows.append(
            [
                str(result["run"]),
                f"{result['creation_rate']:.0f}",
                str(result["pairs"]),
                _ms(latency.get("p50")),
                _ms(latency.get("p90")),
                _ms(latency.get("p99")),
                _ms(latency.get("max")),
                str(result["orders_missing"]),
                f"{result['cpu_seconds'].get('operator', 0):.1f}",
                _mb(rss.get("operator", {}).get("hwm", 0)),
                _mb(rss.get("apiserver", {}).get("final", 0)),
            ]
        )
    return rows


_SPLIT_HEADER = ("run", "part", "p50 ms", "p90 ms", "p99 ms", "max ms")


def split_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in runs:
        for part, label in (
            ("latency", "pod created -> order seen"),
            ("reaction", "pod created -> issuedAt"),
            ("write", "issuedAt -> order seen"),
        ):
            figures = result[part]
            rows.append(
                [str(result["run"]), label]
                + [_ms(figures.get(p)) for p in ("p50", "p90", "p99", "max")]
            )
    return rows


_TENTH_HEADER = ("tenth of the creation window", "pairs", "p50 ms", "p99 ms", "max ms")


def tenth_rows(result: Mapping[str, Any]) -> list[list[str]]:
    return [
        [f"{index + 1}", str(tenth.get("count", 0))]
        + [_ms(tenth.get(p)) for p in ("p50", "p99", "max")]
        for index, tenth in enumerate(result["latency_by_tenth"])
    ]


_USAGE_HEADER = ("run", "process", "CPU s", "CPU share", "final RSS MB", "peak RSS MB")


def usage_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in runs:
        for name in ("operator", "apiserver", "etcd", "benchmark", "others"):
            rss = result["rss"].get(name)
            rows.append(
                [
                    str(result["run"]),
                    name,
                    f"{result['cpu_seconds'].get(name, 0):.1f}",
                    f"{100 * result['cpu_share'].get(name, 0):.0f}%",
                    _mb(rss["final"]) if rss else "-",
                    _mb(rss["hwm"]) if rss else "-",
                ]
            )
    return rows


def verdicts(report: Mapping[str, Any]) -> list[str]:
    runs = report["runs"]
    worst_p99 = max((r["latency"].get("p99", math.inf) for r in runs), default=math.inf)
    missing = sum(r["orders_missing"] for r in runs)
    peak = report["operator_peak_rss"]
    p99_met = worst_p99 < TARGET_P99 and missing == 0
    lines = [
        f"p99 pod created -> order seen: {_ms(worst_p99)} ms (worst run; target < "
        f"{TARGET_P99 * 1000:.0f} ms), {missing} orders missing: "
        + ("MET" if p99_met else "NOT MET"),
        f"operator peak RSS (VmHWM): {_mb(peak)} MB (target < {TARGET_RSS / MB:.0f} MB): "
        + ("MET" if peak < TARGET_RSS else "NOT MET"),
    ]
    return lines


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(report: Mapping[str, Any]) -> str:
    args = report["config"]
    rate = f"{args['rate']} pods/s" if args["rate"] else "as fast as the apiserver took them"
    lines = [
        "# Operator at scale: pod bound -> prefetch order on the node's LazyImageNode",
        "",
        "Written by `scripts/bench-operator "
        + " ".join(report["argv"])
        + "`. DESIGN §5 target: from binding to the agent starting its prefetch, p99 under 1 s "
        "at 1,000 nodes and 10,000 pods, with operator memory under 300 MB.",
        "",
        "Method: a real etcd and kube-apiserver "
        f"({report['kube_version']}, no scheduler, controllers or kubelet) and the real "
        f"operator (kopf {report['kopf_version']}, default settings: "
        f"`--status-interval {args['status_interval']:g}`). "
        f"{args['nodes']:,} Node objects exist before the operator starts. "
        f'{args["pods"]:,} pods annotated `{names.POD_PREWARM_ANNOTATION}: "true"` are '
        "created already bound (`spec.nodeName` set, as the scheduler binds them) by "
        f"{args['creators']} concurrent creators, {rate}; pod i goes to node i mod "
        f"{args['nodes']:,}, each node runs {args['apps_per_node']} apps of 1-3 containers "
        f"drawn from {args['images']} images, so most (node, image) pairs are needed by "
        "several pods. A watch on `lazyimagenodes` (what each agent watches) records when "
        "each pair's order first appears; its latency counts from the completion of the "
        "first pod POST that needed it. The order's `issuedAt` splits it into the operator's "
        "reaction and its write. Every run uses new image tags, so every pair needs a new "
        f"order; stragglers get {args['settle']:g} s after the last pod. All processes, this "
        "benchmark included, share the machine.",
        "",
        f"Machine: {report['cpus']} CPUs ({report['cpu_model']}), "
        f"{report['memory_gb']:.0f} GB, kernel {report['kernel']}, Python "
        f"{report['python']}; load average {report['loadavg_at_start']:.2f} at the start. "
        f"Control plane up in {report['control_plane_seconds']:.0f} s, nodes created in "
        f"{report['nodes_seconds']:.0f} s, operator's first order "
        f"{report['warmup_seconds']:.1f} s after its start.",
        "",
        "## Result",
        "",
        *_md_table(_RESULT_HEADER, result_rows(report["runs"])),
        "",
        *(f"- {line}" for line in verdicts(report)),
        "",
        "`pairs`: (node, image) orders needed. `op CPU s`: the operator's CPU seconds from the "
        "first pod to the last order. `op peak MB`: the operator's VmHWM.",
        "",
        "## Where the time goes",
        "",
        *_md_table(_SPLIT_HEADER, split_rows(report["runs"])),
        "",
    ]
    for result in report["runs"]:
        lines += [
            f"Run {result['run']}, latency by when the pair was first needed "
            f"({result['creation_seconds']:.0f} s of pod creation in tenths):",
            "",
            *_md_table(_TENTH_HEADER, tenth_rows(result)),
            "",
        ]
    lines += [
        "## Processes",
        "",
        *_md_table(_USAGE_HEADER, usage_rows(report["runs"])),
        "",
        "`CPU share`: CPU seconds over the run's wall time (creation plus settling), 100% = "
        "one core.",
        "",
    ]
    for result in report["runs"]:
        lines.append(
            f"Run {result['run']}: {result['node_writes']:,} LazyImageNode writes for "
            f"{result['pairs']:,} pairs, {result['orders_reissued']} orders re-issued, "
            f"the benchmark's event loop lag p99 {_ms(result['loop_lag'].get('p99'))} ms, "
            f"max {_ms(result['loop_lag'].get('max'))} ms."
        )
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    if report["failures"]:
        lines += ["", "## Failures", "", *(f"- {failure}" for failure in report["failures"])]
    return "\n".join(lines) + "\n"


def print_report(report: Mapping[str, Any]) -> None:
    print_table("operator: pod created -> order seen", _RESULT_HEADER, result_rows(report["runs"]))
    print_table("where the time goes", _SPLIT_HEADER, split_rows(report["runs"]))
    for result in report["runs"]:
        print_table(
            f"run {result['run']}: latency by tenth of the creation window",
            _TENTH_HEADER,
            tenth_rows(result),
        )
    print_table("processes", _USAGE_HEADER, usage_rows(report["runs"]))
    print()
    for line in verdicts(report):
        print(line, flush=True)


# -- operator log ------------------------------------------------------------------------------

_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ")


def operator_log_summary(path: Path) -> dict[str, Any]:
    """Counts of the operator's log lines by kind, and the first few problems."""
    counts = {"ordered": 0, "WARNING": 0, "ERROR": 0, "CRITICAL": 0, "Traceback": 0}
    problems: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {"counts": counts, "problems": problems}
    for line in text.splitlines():
        if "ordered prefetch on" in line:
            counts["ordered"] += 1
        elif line.startswith("Traceback"):
            counts["Traceback"] += 1
        elif match := _LOG_LEVEL.search(line):
            counts[match.group(1)] += 1
            if len(problems) < 10:
                problems.append(line[:400])
    return {"counts": counts, "problems": problems}


# -- main --------------------------------------------------------------------------------------


def install_crds(cluster: KubeCluster) -> None:
    """crds/ applied and established, as the ``lazyimage_crds`` fixture does it."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/lazyimages.lazyimage.io", "crd/lazyimagenodes.lazyimage.io",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.kubectl("get", "lazyimagenodes", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise BenchError("lazyimagenodes is not served 30 s after its CRD was established")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def _kube_version(cluster: KubeCluster) -> str:
    with cluster.http_client(timeout=10) as client:
        return str(client.get("/version").json().get("gitVersion", "?"))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="Node objects (default 1000)")
    parser.add_argument("--pods", type=int, default=10000, help="pods per run (default 10000)")
    parser.add_argument("--images", type=int, default=50, help="image pool size (default 50)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PODS_PER_S",
        help="pace pod creation (default: as fast as the creators go)",
    )
    parser.add_argument("--creators", type=int, default=4, help="concurrent pod creators")
    parser.add_argument("--apps-per-node", type=int, default=3, help="apps each node runs")
    parser.add_argument("--runs", type=int, default=1, help="runs, each with new image tags")
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds to wait for orders after the last pod"
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=2.0,
        help="the operator's --status-interval (default 2, its own default)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="bound on one run's pod creation"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path("docs/bench"), help="where operator.md/.json go"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where the work dir goes")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, etcd)")
    args = parser.parse_args(argv)
    if min(args.nodes, args.pods, args.images, args.creators, args.apps_per_node, args.runs) < 1:
        parser.error("counts must be positive")
    return args


@contextlib.contextmanager
def _work_dir(args: argparse.Namespace) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="lazyimage-bench-operator-", dir=args.tmp))
    try:
        yield work
    finally:
        if args.keep:
            _log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


_CONFIG_KEYS = (
    "nodes", "pods", "images", "rate", "creators", "apps_per_node", "runs", "settle",
    "status_interval", "seed",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    report: dict[str, Any] = {
        **machine_facts(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "kopf_version": importlib.metadata.version("kopf"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "config": {key: getattr(args, key) for key in _CONFIG_KEYS},
        "runs": [],
        "notes": [],
        "failures": [],
    }
    operator: OperatorProcess | None = None
    with _work_dir(args) as work:
        cluster = KubeCluster(work / "kube")
        try:
            cluster.start()
            report["control_plane_seconds"] = cluster.startup_seconds
            report["kube_version"] = _kube_version(cluster)
            install_crds(cluster)
            config = KubeConfig.from_kubeconfig(cluster.kubeconfig)
            nodes = node_names(args.nodes)
            began = time.monotonic()
            # The operator is started with the Node objects already there, as in a live
            # cluster; it learns them from its first list.
            bench = Bench(args, cluster, config, nodes)
            asyncio.run(create_nodes(bench))
            report["nodes_seconds"] = time.monotonic() - began
            operator = OperatorProcess(
                work / "operator",
                cluster.kubeconfig,
                "--status-interval",
                f"{args.status_interval:g}",
            )
            bench.operator = operator
            bench.pids = {**control_plane_pids(cluster), "operator": operator.proc.pid}
            report["warmup_seconds"] = asyncio.run(warm_up(bench))
            _log(f"operator ordering after {report['warmup_seconds']:.1f} s")
            for run in range(args.runs):
                report["runs"].append(asyncio.run(one_run(bench, run)))
            report["failures"] += bench.failures
            final = read_usage(operator.proc.pid)
            report["operator_peak_rss"] = final.hwm if final else 0
        except (BenchError, KubeError, OSError) as exc:
            report["failures"].append(f"{type(exc).__name__}: {exc}"[:2000])
            _log(f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exception(exc, file=sys.stderr)
        finally:
            if operator is not None:
                operator.stop()
                report["operator_log"] = operator_log_summary(operator.log_path)
            cluster.stop()
    report["seconds"] = round(time.perf_counter() - started, 1)
    log_summary = report.get("operator_log", {})
    if log_summary.get("problems"):
        report["notes"].append(
            f"operator log: {log_summary['counts']}; first problem: {log_summary['problems'][0]}"
        )
    if report["runs"]:
        report.setdefault("operator_peak_rss", 0)
        print_report(report)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "operator.md").write_text(markdown(report))
        (args.out / "operator.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        _log(f"wrote {args.out / 'operator.md'} and {args.out / 'operator.json'}")
    print(f"\n{len(report['failures'])} failures; {report['seconds']} s in all", flush=True)
    for failure in report["failures"]:
        print(f"  FAILED {failure}", flush=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
