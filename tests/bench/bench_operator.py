"""Operator scale benchmark: the time from a pod's binding to its node's prefetch order.

At 1,000 nodes and 10,000 pods by default, against a real etcd and kube-apiserver
(``tests.fixtures.kube.KubeCluster``). Target (docs/targets.md): from binding to the agent
starting its prefetch, p99 under 1 s at 1,000 nodes and 10,000 pods, with operator memory
under 300 MB. This measures the operator's part of it: a pod is created already bound
(``spec.nodeName`` set, as the scheduler would bind it) and the clock stops when the order for
each of its images shows up in a watch on ``lazyimagenodes``, which is what a node's agent
watches. No kubelet and no scheduler: pods stay Pending.

Method, per run (``--runs`` runs for each ``--rate``):

1. Node objects (``--nodes``) exist before a fresh operator starts; a warm-up pod proves it is
   watching. Every run uses its own image tags, so every (node, image) pair needs a new order.
2. Pods (``--pods``) are POSTed by ``--creators`` concurrent tasks, paced at the run's rate
   (0: as fast as the apiserver takes them). Pod ``i`` goes to node ``i % nodes``; each node
   runs a few apps (``--apps-per-node``) of 1-3 containers drawn from ``--images`` images, so
   most pairs are needed by several pods and the "already ordered" path is exercised too.
3. A watch on ``lazyimagenodes`` records when each (node, image) order first appears.
   Latency of a pair = that moment - the completion of the first pod POST that needed it. The
   order's ``issuedAt`` (the operator's clock when its handler started) splits it into
   reaction (pod created to handler) and write (handler to the order reaching a watcher).
4. After the last pod, stragglers get ``--settle`` seconds; orders still missing then are
   failures. The run's pods, the LazyImageNodes and the LazyImages are deleted and the
   operator stopped, so the next run starts alike.

CPU seconds (utime + stime from /proc) and RSS (VmRSS, peak VmHWM) of the operator, the
apiserver and etcd are read around each run, with the whole machine's busy time (what else
ran meanwhile shows as ``others``) and the apiserver's request counts and handling times
(its /metrics). Everything shares the machine's cores with this process, which creates the
pods and watches the orders. ``--profile DIR`` also samples the operator with py-spy.

Run it with ``scripts/bench-operator [--nodes N] [--pods N] [--images N] [--rate PODS_PER_S
...] [--runs N]``. It prints its tables and writes ``operator.md`` and ``operator.json`` to
``--out`` (default ``docs/bench``). The exit status is non-zero when something measured is
broken (the operator died, pods could not be created, orders never came), never because a
figure misses its target.
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
import subprocess
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

import httpx
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
from tests.fixtures.operator import OperatorProcess, install_crds

NODES = ResourcePath("", "v1", "nodes")
NAMESPACES = ResourcePath("", "v1", "namespaces")
LAZYIMAGE_NODES = ResourcePath(names.API_GROUP, names.API_VERSION, names.LAZYIMAGE_NODE_PLURAL)
TARGET_P99 = 1.0  # seconds, docs/targets.md
TARGET_RSS = 300 * 1_000_000  # bytes, docs/targets.md
MB = 1_000_000
REGISTRY = "reg.example:5000"
WARMUP_NAMESPACE = "bench-warmup"

_WARMUP_TIMEOUT = 180.0
_CLEANUP_TIMEOUT = 120.0
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
    """CPU seconds the whole machine has been busy: all cores, user to softirq (idle, iowait
    and time stolen by the hypervisor left out)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:7]) - fields[3] - fields[4]) / _CLK_TCK


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


# -- profile and apiserver metrics ------------------------------------------------------------


def start_profiler(bench: Bench, run: int) -> subprocess.Popen[bytes] | None:
    """With ``--profile DIR``: py-spy samples the operator for the run, without pausing it
    (``--nonblocking``), into collapsed stacks ``DIR/operator-runN.txt``."""
    if bench.args.profile is None or bench.operator is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    bench.args.profile.mkdir(parents=True, exist_ok=True)
    out = bench.args.profile.resolve() / f"operator-run{run + 1}.txt"
    return subprocess.Popen(
        [spy, "record", "--pid", str(bench.operator.proc.pid), "--nonblocking", "--rate", "200",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None or profiler.poll() is not None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(timeout=10)


_METRIC = re.compile(
    r"^(apiserver_request_total|apiserver_request_duration_seconds_bucket)"
    r"\{([^}]*)\} (\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class ApiMetrics:
    """The apiserver's request counts and duration histograms, by verb and resource."""

    counts: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # cumulative, by le


def api_metrics(cluster: KubeCluster) -> ApiMetrics:
    with cluster.http_client(timeout=30) as client:
        text = client.get("/metrics").text
    metrics = ApiMetrics()
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        what = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        key = f"{labels.get('verb', '?')} {what or labels.get('path', '?')}"
        value = float(match.group(3))
        if match.group(1) == "apiserver_request_total":
            metrics.counts[key] = metrics.counts.get(key, 0.0) + value
        else:
            bound = float(labels.get("le", "inf"))
            buckets = metrics.buckets.setdefault(key, {})
            buckets[bound] = buckets.get(bound, 0.0) + value
    return metrics


def _bucket_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None without samples)."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    return next(bound for bound, count in ordered if count >= q * total)


def api_delta(before: ApiMetrics, after: ApiMetrics) -> dict[str, dict[str, Any]]:
    """Requests made between two readings: count, and the apiserver's own p50 and p99 time
    (bucket upper bounds) where it keeps a histogram (not for watches)."""
    result: dict[str, dict[str, Any]] = {}
    for key, value in sorted(after.counts.items()):
        count = round(value - before.counts.get(key, 0.0))
        if count <= 0:
            continue
        entry: dict[str, Any] = {"count": count}
        old = before.buckets.get(key, {})
        delta = {b: c - old.get(b, 0.0) for b, c in after.buckets.get(key, {}).items()}
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            entry[name] = _bucket_quantile(delta, q)
        result[key] = entry
    return result


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
    # Orders name images as the operator canonicalises them; these must already be canonical.
    for image in {image for plan in plans for image in plan.images}:
        if canonical_image(image) != image:
            raise BenchError(f"{image} is not canonical: the operator orders it as another name")
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
    operator_logs: list[dict[str, Any]] = field(default_factory=list)

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


async def warm_up(bench: Bench, run: int) -> float:
    """One pod, and the wait for its order: the operator is up and watching. Seconds taken."""
    started = time.monotonic()
    node, image = bench.nodes[0], f"{REGISTRY}/warmup:{run + 1}"
    plan = PodPlan(f"warmup-{run + 1}", node, (image,))
    async with KubeClient(bench.config) as client:
        await ensure_namespace(client, WARMUP_NAMESPACE)
        pods = ResourcePath("", "v1", "pods", WARMUP_NAMESPACE)
        if not await _post(client, pods, plan.body(WARMUP_NAMESPACE)):
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
    bench: Bench,
    client: KubeClient,
    namespace: str,
    plans: Sequence[PodPlan],
    state: Creation,
    rate: float,
) -> None:
    """POST every pod with a few concurrent creators, paced at ``rate`` pods/s unless 0."""
    path = ResourcePath("", "v1", "pods", namespace)
    queue = iter(enumerate(plans))
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
                done = time.time()
                state.done[index] = done
                state.round_trips.append(done - sent)
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
            key = (plan.node, image)
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
        last = max((t for t in state.done if t is not None), default=state.started)
        elapsed = max(last - state.started, 1e-9)
        operator = sampler.samples.get("operator") or []
        rss = operator[-1][1].rss if operator else 0
        cpu = sampler.cpu_percent_series("operator")
        _log(
            f"run {run + 1}: pods {state.created}/{len(plans)} "
            f"({state.created / elapsed:.0f}/s), orders {seen}/{len(needed)}, "
            f"operator {rss / MB:.0f} MB, {cpu[-1][1] if cpu else 0:.0f}% CPU"
        )


def _usage_delta(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, float]:
    return {name: after[name].cpu - before[name].cpu for name in after if name in before}


async def one_run(bench: Bench, run: int, rate: float) -> dict[str, Any]:
    args = bench.args
    tag = str(run + 1)
    namespace = f"bench-operator-r{run + 1}"
    plans = plan_pods(bench.nodes, args.pods, args.images, args.apps_per_node, tag, args.seed)
    state = Creation(done=[None] * len(plans))
    sampler = Sampler(dict(bench.pids))
    lag = LoopLag()
    profiler: subprocess.Popen[bytes] | None = None
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
            requests_before = await asyncio.to_thread(api_metrics, bench.cluster)
            before = sampler.read()
            self_before, machine_before = _self_cpu(), machine_cpu()
            profiler = start_profiler(bench, run)
            background.append(
                asyncio.create_task(progress(bench, run, plans, state, watch, sampler))
            )
            try:
                async with asyncio.timeout(args.max_seconds):
                    await create_pods(bench, writer, namespace, plans, state, rate)
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
            requests = api_delta(
                requests_before, await asyncio.to_thread(api_metrics, bench.cluster)
            )
        finally:
            stop_profiler(profiler)
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
        "paced_at": rate,
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
        "api_requests": requests,
        "operator_series": [
            [round(t - state.started, 1), round(pct, 1), rss] for t, pct, rss in operator_series
        ],
    }


def clean_up(cluster: KubeCluster, namespace: str) -> None:
    """Delete the run's pods, the warm-up pods, every LazyImageNode and LazyImage, so the next
    run starts from Node objects alone. Done while the operator still runs, since it removes
    its own finalizers; any left after the deadline are stripped."""
    group = f"/apis/{names.API_GROUP}/{names.API_VERSION}"
    collections = (
        f"/api/v1/namespaces/{namespace}/pods",
        f"/api/v1/namespaces/{WARMUP_NAMESPACE}/pods",
        f"{group}/{names.LAZYIMAGE_NODE_PLURAL}",
        f"{group}/{names.LAZYIMAGE_PLURAL}",
    )
    with cluster.http_client(timeout=120) as client:
        for url in collections:
            client.delete(url, params={"gracePeriodSeconds": 0}).raise_for_status()
        deadline = time.monotonic() + _CLEANUP_TIMEOUT
        while True:
            left = {url: client.get(url).json().get("items") or [] for url in collections}
            if not any(left.values()):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for url, items in left.items():
            for item in items:
                client.patch(
                    f"{url}/{item['metadata']['name']}",
                    content=json.dumps({"metadata": {"finalizers": None}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                )
        _log(f"clean-up: finalizers stripped from {sum(map(len, left.values()))} objects")


def measured_run(bench: Bench, work: Path, run: int, rate: float) -> dict[str, Any]:
    """A fresh operator (started with the Node objects already there, as in a live cluster),
    its warm-up, one run at ``rate``, then the clean-up and the operator's stop."""
    args = bench.args
    operator = OperatorProcess(
        work / f"operator-{run + 1}",
        bench.cluster.kubeconfig,
        "--status-interval",
        f"{args.status_interval:g}",
        "--log-level",
        args.operator_log_level,
    )
    bench.operator = operator
    bench.pids = {**control_plane_pids(bench.cluster), "operator": operator.proc.pid}
    try:
        warmup = asyncio.run(warm_up(bench, run))
        _log(f"run {run + 1}: the operator ordered the warm-up pod after {warmup:.1f} s")
        result = asyncio.run(one_run(bench, run, rate))
        usage = read_usage(operator.proc.pid)
        result["warmup_seconds"] = warmup
        result["operator_peak_rss"] = usage.hwm if usage else 0
        clean_up(bench.cluster, result["namespace"])
    finally:
        operator.stop()
        bench.operator_logs.append(operator_log_summary(operator.log_path))
    result["operator_log"] = bench.operator_logs[-1]
    return result


# -- reports -----------------------------------------------------------------------------------

_RESULT_HEADER = (
    "run", "paced at", "pods/s", "pairs", "p50 ms", "p90 ms", "p99 ms", "max ms", "missing",
    "op CPU s", "op peak MB", "apiserver MB",
)  # fmt: skip


def _paced(rate: float) -> str:
    return f"{rate:g}/s" if rate else "max"


def result_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in runs:
        latency, rss = result["latency"], result["rss"]
        rows.append(
            [
                str(result["run"]),
                _paced(result["paced_at"]),
                f"{result['creation_rate']:.0f}",
                str(result["pairs"]),
                _ms(latency.get("p50")),
                _ms(latency.get("p90")),
                _ms(latency.get("p99")),
                _ms(latency.get("max")),
                str(result["orders_missing"]),
                f"{result['cpu_seconds'].get('operator', 0):.1f}",
                _mb(result["operator_peak_rss"]),
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


_REQUESTS_HEADER = (
    "run", "API requests (verb resource)", "count", "per pod", "apiserver p50 ms",
    "apiserver p99 ms",
)  # fmt: skip


def _bound_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return "> 60000" if math.isinf(value) else f"<= {value * 1000:.0f}"


# The resources the operator and the benchmark use; the apiserver's own traffic is left out.
_RESOURCES = ("pods", "nodes", names.LAZYIMAGE_PLURAL, names.LAZYIMAGE_NODE_PLURAL)


def request_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in runs:
        requests = {
            what: entry
            for what, entry in result["api_requests"].items()
            if what.split(" ", 1)[-1].split("/")[0] in _RESOURCES
        }
        for what in sorted(requests, key=lambda key: -requests[key]["count"]):
            entry = requests[what]
            rows.append(
                [
                    str(result["run"]),
                    what,
                    str(entry["count"]),
                    f"{entry['count'] / max(result['pods'], 1):.2f}",
                    _bound_ms(entry.get("p50")),
                    _bound_ms(entry.get("p99")),
                ]
            )
    return rows


def verdicts(report: Mapping[str, Any]) -> list[str]:
    """Each run against the latency target (no order may be missing), and the operator's
    memory over all runs."""
    lines = []
    for result in report["runs"]:
        p99 = result["latency"].get("p99", math.inf)
        met = p99 < TARGET_P99 and result["orders_missing"] == 0
        lines.append(
            f"run {result['run']} ({result['creation_rate']:.0f} pods/s): p99 pod created -> "
            f"order seen {_ms(p99)} ms (target < {TARGET_P99 * 1000:.0f} ms), "
            f"{result['orders_missing']} orders missing: " + ("MET" if met else "NOT MET")
        )
    peak = max((result["operator_peak_rss"] for result in report["runs"]), default=0)
    lines.append(
        f"operator peak RSS (VmHWM): {_mb(peak)} MB (target < {TARGET_RSS / MB:.0f} MB): "
        + ("MET" if peak < TARGET_RSS else "NOT MET")
    )
    return lines


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(report: Mapping[str, Any]) -> str:
    args = report["config"]
    lines = [
        "# Operator at scale: pod bound -> prefetch order on the node's LazyImageNode",
        "",
        "Written by `scripts/bench-operator "
        + " ".join(report["argv"])
        + "`. Target (docs/targets.md): from binding to the agent starting its prefetch, "
        "p99 under 1 s at 1,000 nodes and 10,000 pods, with operator memory under 300 MB.",
        "",
        "Method: a real etcd and kube-apiserver "
        f"({report['kube_version']}, no scheduler, controllers or kubelet) and the real "
        f"operator (kopf {report['kopf_version']}, default settings: "
        f"`--status-interval {args['status_interval']:g}`). "
        f"{args['nodes']:,} Node objects exist; each run starts a fresh operator, waits for "
        "its first order (a warm-up pod), then "
        f'{args["pods"]:,} pods annotated `{names.POD_PREWARM_ANNOTATION}: "true"` are '
        "created already bound (`spec.nodeName` set, as the scheduler binds them) by "
        f"{args['creators']} concurrent creators, paced as the run says (`max`: as fast as "
        "the apiserver takes them); pod i goes to node i mod "
        f"{args['nodes']:,}, each node runs {args['apps_per_node']} apps of 1-3 containers "
        f"drawn from {args['images']} images, so most (node, image) pairs are needed by "
        "several pods. A watch on `lazyimagenodes` (what each agent watches) records when "
        "each pair's order first appears; its latency counts from the completion of the "
        "first pod POST that needed it. The order's `issuedAt` splits it into the operator's "
        "reaction and its write. Every run uses new image tags, so every pair needs a new "
        f"order; stragglers get {args['settle']:g} s after the last pod. After each run its "
        "pods, the LazyImageNodes and the LazyImages are deleted and the operator stopped, "
        "so each run starts alike: the first order on each node also creates its "
        "LazyImageNode. All processes, this benchmark included, share the machine.",
        "",
        f"Machine: {report['cpus']} CPUs ({report['cpu_model']}), "
        f"{report['memory_gb']:.0f} GB, kernel {report['kernel']}, Python "
        f"{report['python']}; load average {report['loadavg_at_start']:.2f} at the start; "
        f"lazyimage {report['revision']}. "
        f"Control plane up in {report['control_plane_seconds']:.0f} s, nodes created in "
        f"{report['nodes_seconds']:.0f} s; the operator's first order came "
        + ", ".join(f"{r['warmup_seconds']:.1f} s" for r in report["runs"])
        + " after its start.",
        "",
        "## Result",
        "",
        *_md_table(_RESULT_HEADER, result_rows(report["runs"])),
        "",
        *(f"- {line}" for line in verdicts(report)),
        "",
        "`pairs`: (node, image) orders needed. `op CPU s`: the operator's CPU seconds from the "
        "first pod to the last order ("
        + ", ".join(
            f"{1000 * r['cpu_seconds'].get('operator', 0) / max(r['pods'], 1):.1f} ms per pod"
            for r in report["runs"]
        )
        + "). `op peak MB`: the operator's VmHWM.",
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
        post = result["pod_post_seconds"]
        lines.append(
            f"Run {result['run']}: {result['node_writes']:,} LazyImageNode writes for "
            f"{result['pairs']:,} pairs, {result['orders_reissued']} orders re-issued; a pod "
            f"POST took {_ms(post.get('p50'))} ms (p50), {_ms(post.get('p99'))} ms (p99); "
            f"the benchmark's event loop lag p99 {_ms(result['loop_lag'].get('p99'))} ms, "
            f"max {_ms(result['loop_lag'].get('max'))} ms."
        )
    lines += [
        "",
        "## API requests during the run",
        "",
        "From the apiserver's `apiserver_request_total`, and its own handling time from "
        "`apiserver_request_duration_seconds` (the upper bound of the histogram bucket). The "
        "benchmark makes the `POST pods` and the `lazyimagenodes` list and watch; the "
        "operator makes the rest.",
        "",
        *_md_table(_REQUESTS_HEADER, request_rows(report["runs"])),
    ]
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
    print_table("API requests during the run", _REQUESTS_HEADER, request_rows(report["runs"]))
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


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def _git_revision() -> str:
    """HEAD, with ``+changes`` when the operator or the CRDs differ from it in the work tree."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + ("+changes" if git("status", "--porcelain", "--", "operator", "crds") else "")


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
        nargs="+",
        default=[0.0],
        metavar="PODS_PER_S",
        help="pace pod creation; one set of runs per rate, 0 = as fast as the creators go "
        "(default 0)",
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
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR", help="py-spy the operator into DIR"
    )
    parser.add_argument("--operator-log-level", default="info", help="the operator's --log-level")
    args = parser.parse_args(argv)
    if min(args.nodes, args.pods, args.images, args.creators, args.apps_per_node, args.runs) < 1:
        parser.error("counts must be positive")
    if any(rate < 0 for rate in args.rate):
        parser.error("--rate must not be negative")
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
        "revision": _git_revision(),
        "kopf_version": importlib.metadata.version("kopf"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "config": {key: getattr(args, key) for key in _CONFIG_KEYS},
        "runs": [],
        "notes": [],
        "failures": [],
    }
    with _work_dir(args) as work:
        cluster = KubeCluster(work / "kube")
        bench: Bench | None = None
        try:
            cluster.start()
            report["control_plane_seconds"] = cluster.startup_seconds
            report["kube_version"] = _kube_version(cluster)
            install_crds(cluster)
            config = KubeConfig.from_kubeconfig(cluster.kubeconfig)
            bench = Bench(args, cluster, config, node_names(args.nodes))
            began = time.monotonic()
            asyncio.run(create_nodes(bench))
            report["nodes_seconds"] = time.monotonic() - began
            schedule = [rate for rate in args.rate for _ in range(args.runs)]
            for run, rate in enumerate(schedule):
                report["runs"].append(measured_run(bench, work, run, rate))
        except (BenchError, KubeError, OSError, httpx.HTTPError) as exc:
            report["failures"].append(f"{type(exc).__name__}: {exc}"[:2000])
            _log(f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exception(exc, file=sys.stderr)
        finally:
            cluster.stop()
        if bench is not None:
            report["failures"] = bench.failures + report["failures"]
            report["operator_logs"] = bench.operator_logs
    report["seconds"] = round(time.perf_counter() - started, 1)
    for result in report["runs"]:
        share = result["cpu_share"].get("others", 0.0)
        if share > 0.1:
            report["notes"].append(
                f"run {result['run']}: other work on the machine used {100 * share:.0f}% of a "
                "core meanwhile; the figures are worse than on an otherwise idle machine"
            )
        problems = result["operator_log"].get("problems")
        if problems:
            report["notes"].append(
                f"run {result['run']}: operator log {result['operator_log']['counts']}; "
                f"first problem: {problems[0]}"
            )
    if report["runs"]:
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
