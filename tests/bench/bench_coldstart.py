"""Cold start through CRI, as kubelet starts a pod on a node that has never seen its image.

Each run starts a fresh containerd 1.6 (and a fresh snapshotter with an empty cache) and
times CRI PullImage to the container's first line of output (its CRI log timestamp). The
sides, in one run, on the same images and the same links:

- ``overlayfs``: containerd's own snapshotter with the gzip image: a full pull and unpack;
- ``reference``: stargz-snapshotter v0.18.2 (``containerd-stargz-grpc``, FUSE passthrough on)
  with the eStargz image;
- ``lazyimage``: the agent with the same eStargz image;
- ``lazyimage, prewarmed``: the same, after the agent prewarmed the image (``POST
  /v1/images``, what it does for the operator's order when a pod is bound to the node): pulled
  through the node's CRI socket, its layers mounted and their priority zones fetched;
- ``on disk``: overlayfs with the image pulled beforehand: the start of an image already on
  the node, which prewarm is measured against;
- ``reference, no zone`` and ``lazyimage, no zone``: the eStargz conversion without a
  priority zone, where only the read pattern can tell a snapshotter what comes next
  (measured on the ``dataset`` workload).

Every side starts as kubelet does with its default pull policy: ImageStatus, then PullImage
only if the image is not there (the ``pull`` step counts both).

Images: ``python`` runs an import-heavy one-liner; ``numpy`` imports numpy from a layer that
also holds 1 GiB of data nothing reads; ``dataset`` (asked for by name) reads 640 MiB of that
data whole, as a model server loads its weights, where lazy pulling must not lose to a full
pull. Each runs over loopback (the registry on 127.0.0.1)
and over a link shaped with tbf to ``--rate`` (the registry in a network namespace behind a
veth). The sandbox image is pulled before the clock starts, from the loopback registry.

The eStargz image's priority zone comes from a real run, as ``ctr-remote image optimize``
makes one for the reference: the workload runs once on a conversion without a zone, the
agent's access recorder lists the files it read, in order, and the image is converted again
with ``--prioritize-from`` that list. Both snapshotters keep their defaults, background fetch
included.

Run it with ``scripts/bench-coldstart [--runs N] [--images ...] [--links ...]``. It prints a
table per image and link, and writes ``coldstart.md``, ``coldstart.json`` and
``coldstart.png`` to ``--out`` (default ``docs/bench``). The exit status is non-zero when
something measured is broken (a wrong output, a side failing), never because a figure misses
its target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
from lazyimage.oci import Descriptor, Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.bench import coldstart_report
from tests.bench.coldstart_report import (
    LAZYIMAGE,
    LAZYIMAGE_NO_ZONE,
    ON_DISK,
    OVERLAYFS,
    PREWARMED,
    REFERENCE,
    REFERENCE_NO_ZONE,
    SIDES,
)
from tests.bench.mounts import remove_mounts
from tests.bench.reference import StargzReference
from tests.bench.report import machine_facts
from tests.bench.runtime import runtime_python
from tests.bench.shaping import ShapedLink
from tests.fixtures.agent import AgentProcess
from tests.fixtures.containerd import ContainerdServer
from tests.fixtures.cri import CRINode, push_pause_image
from tests.fixtures.images import ensure_image
from tests.fixtures.registry import RegistryServer
from tests.images import (
    NUMPY_PROBE_CODE,
    NUMPY_PROBE_OUTPUT,
    PYTHON_PROBE_CODE,
    PYTHON_PROBE_OUTPUT,
)
from tests.integration.agent.lazyimage_env import registry_bytes
from tests.integration.convert.cli import lazyimage

LOOPBACK = "loopback"

_RUN_TIMEOUT = 600.0  # one container's run, pull included
_CONVERT_TIMEOUT = 1800.0


class BenchError(RuntimeError):
    """Something the benchmark measures is broken (not merely slow)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like an exception, so every cleanup runs.
    raise SystemExit(128 + signum)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_STARTUP_SIDES = (OVERLAYFS, REFERENCE, LAZYIMAGE, PREWARMED, ON_DISK)


@dataclass(frozen=True)
class Workload:
    image: str  # a recipe of tests.images
    command: tuple[str, ...]
    output: str  # its first line of output
    sides: tuple[str, ...] = _STARTUP_SIDES  # what it is measured on, unless --sides says


# A model server's start: reads 5 of the numpy image's 8 dataset shards (640 MiB) whole. Kept
# here, not with the image's recipe, so that the images' cache keys do not depend on it.
DATASET_PROBE_CODE = """\
n = 0
for shard in range(5):
    with open(f"/opt/dataset/shard-{shard:02}.bin", "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
print(n)
"""
DATASET_PROBE_OUTPUT = str(5 * 128 << 20)

WORKLOADS = {
    "python": Workload("python", ("python3", "-c", PYTHON_PROBE_CODE), PYTHON_PROBE_OUTPUT),
    "numpy": Workload("numpy", ("python3", "-c", NUMPY_PROBE_CODE), NUMPY_PROBE_OUTPUT),
    # Not in the default set: a full pull of 1.1 GB per run on each side.
    "dataset": Workload(
        "numpy",
        ("python3", "-c", DATASET_PROBE_CODE),
        DATASET_PROBE_OUTPUT,
        (OVERLAYFS, REFERENCE, LAZYIMAGE, REFERENCE_NO_ZONE, LAZYIMAGE_NO_ZONE),
    ),
}
DEFAULT_WORKLOADS = ("python", "numpy")


@dataclass(frozen=True)
class Published:
    """One workload's images in one registry."""

    registry: RegistryServer
    gzip_ref: str
    esgz_ref: str
    gzip_layers: list[Descriptor]
    esgz_layers: list[Descriptor]
    priority_zone: int = 0  # bytes, over all layers of the eStargz image
    nozone_ref: str = ""  # the eStargz conversion without a priority zone
    nozone_layers: tuple[Descriptor, ...] = ()


@dataclass(frozen=True)
class Sample:
    seconds: float  # PullImage (on disk: CreateContainer) to the first line of output
    pull_seconds: float
    fetched: int  # layer bytes the registry served during the run
    peak_rss: int  # the snapshotter process's VmHWM, bytes; 0 for containerd's own
    steps: dict[str, float] = field(default_factory=dict)  # CRI call -> seconds


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    pause_image: str
    pause_host: str
    failures: list[str] = field(default_factory=list)
    python: str = sys.executable  # what the agent runs with

    def fail(self, what: str, exc: BaseException) -> None:
        message = f"{what}: {type(exc).__name__}: {exc}"
        self.failures.append(message if len(message) < 600 else message[:600] + " ...")
        _say(f"\nFAILED {message}")
        traceback.print_exception(exc, file=sys.stderr)


# -- images ------------------------------------------------------------------------------------


def _cli(*args: str, hosts: Sequence[str]) -> str:
    insecure = [arg for host in hosts for arg in ("--insecure-registry", host)]
    done = lazyimage(*args, *insecure, timeout=_CONVERT_TIMEOUT)
    if done.code != 0:
        raise BenchError(f"lazyimage {' '.join(args)} failed ({done.code}): {done.err.strip()}")
    return done.out


def _layers(host: str, ref: str) -> list[Descriptor]:
    async def fetch() -> list[Descriptor]:
        async with RegistryClient(insecure_registries=(host,)) as client:
            got = await client.get_manifest(Reference.parse(ref))
            return Manifest.parse(got.data, got.media_type).layers

    return anyio.run(fetch)


def _publish(
    registry: RegistryServer,
    gzip_ref: str,
    esgz_ref: str,
    priority_zone: int = 0,
    nozone_ref: str = "",
) -> Published:
    return Published(
        registry,
        gzip_ref,
        esgz_ref,
        _layers(registry.host, gzip_ref),
        _layers(registry.host, esgz_ref),
        priority_zone,
        nozone_ref,
        tuple(_layers(registry.host, nozone_ref)) if nozone_ref else (),
    )


def prepare_images(ctx: Context, name: str, registry: RegistryServer) -> Published:
    """Push the gzip image, learn its startup files, convert it with them prioritized."""
    workload = WORKLOADS[name]
    started = time.perf_counter()
    image = ensure_image(workload.image)
    repo = f"{registry.host}/bench/{name}"
    hosts = [registry.host]
    _cli("copy", image.ref, f"{repo}:gzip", hosts=hosts)
    _say(f"{name}: pushed the gzip image ({time.perf_counter() - started:.0f} s)")
    _cli("convert", f"{repo}:gzip", f"{repo}:esgz-nozone", hosts=hosts)
    _say(f"{name}: converted without a priority zone ({time.perf_counter() - started:.0f} s)")
    nozone = _publish(registry, f"{repo}:gzip", f"{repo}:esgz-nozone")
    paths = learn_startup_files(ctx, workload, nozone)
    listing = ctx.work / f"{name}-startup-files.txt"
    listing.write_text("".join(f"{path}\n" for path in paths))
    _cli("convert", f"{repo}:gzip", f"{repo}:esgz", "--prioritize-from", str(listing), hosts=hosts)
    inspection = json.loads(_cli("inspect", "--json", f"{repo}:esgz", hosts=hosts))
    zone = sum(layer["prefetch_zone"] for layer in inspection["layers"])
    published = _publish(registry, f"{repo}:gzip", f"{repo}:esgz", zone, nozone.esgz_ref)
    _say(
        f"{name}: {len(paths)} startup files; converted with them prioritized "
        f"({time.perf_counter() - started:.0f} s in all); eStargz "
        f"{sum(d.size for d in published.esgz_layers):,} bytes, gzip "
        f"{sum(d.size for d in published.gzip_layers):,} bytes, priority zones {zone:,} bytes"
    )
    return published


def copy_images(published: Published, target: RegistryServer, name: str) -> Published:
    """The same images in another registry (the one behind the shaped link)."""
    hosts = [published.registry.host, target.host]
    refs = []
    for ref, tag in (
        (published.gzip_ref, "gzip"),
        (published.esgz_ref, "esgz"),
        (published.nozone_ref, "esgz-nozone"),
    ):
        refs.append(f"{target.host}/bench/{name}:{tag}")
        _cli("copy", ref, refs[-1], hosts=hosts)
    return _publish(target, refs[0], refs[1], published.priority_zone, refs[2])


# -- one run -----------------------------------------------------------------------------------


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for process {pid}")


def _node_dir(base: Path) -> Path:
    return base / "node"


@contextlib.contextmanager
def _node(
    ctx: Context,
    base: Path,
    registry: RegistryServer,
    socket: Path | None,
    snapshotter_root: Path | None = None,
) -> Iterator[CRINode]:
    node = CRINode(
        _node_dir(base),
        socket,
        [registry.host, ctx.pause_host],
        ctx.pause_image,
        snapshotter_root=snapshotter_root,
        rpc_timeout=_RUN_TIMEOUT,
    )
    try:
        node.start()
        node.pull(ctx.pause_image)  # before the clock: kubelet's nodes have it
        yield node
    finally:
        forced = node.cleanup()
        if forced:
            _say(f"cleanup of {node.base} needed force: {forced}")


@contextlib.contextmanager
def _snapshotter(ctx: Context, side: str, base: Path, registry: RegistryServer) -> Iterator[Any]:
    """The side's snapshotter process (an AgentProcess, a StargzReference), or None."""
    if side in (LAZYIMAGE, PREWARMED, LAZYIMAGE_NO_ZONE):
        # The prewarm pulls through the CRI socket of the node that _node starts next.
        cri = ["--cri-socket", str(ContainerdServer.socket_in(_node_dir(base) / "containerd"))]
        agent = AgentProcess(base / "agent", [registry.host], extra=cri, python=ctx.python)
        try:
            yield agent
        finally:
            agent.stop()
    elif side in (REFERENCE, REFERENCE_NO_ZONE):
        with StargzReference(
            base / "ref", passthrough=True, insecure_hosts=[registry.host], containerd=False
        ) as reference:
            yield reference
    else:
        yield None


def _prewarm(agent: AgentProcess, published: Published) -> None:
    agent.request("POST", "/v1/images", {"image": published.esgz_ref})


def measure(
    ctx: Context, side: str, workload: Workload, published: Published, base: Path
) -> Sample:
    if side in (REFERENCE_NO_ZONE, LAZYIMAGE_NO_ZONE):
        ref, layers = published.nozone_ref, list(published.nozone_layers)
    elif side in (REFERENCE, LAZYIMAGE, PREWARMED):
        ref, layers = published.esgz_ref, published.esgz_layers
    else:
        ref, layers = published.gzip_ref, published.gzip_layers
    registry = published.registry
    with _snapshotter(ctx, side, base, registry) as process:
        socket: Path | None = None
        root: Path | None = None
        pid = 0
        if isinstance(process, AgentProcess):
            socket, root, pid = (
                process.base / "run" / "snapshotter.sock",
                process.state_dir / "snapshotter",
                process.proc.pid,
            )
        elif isinstance(process, StargzReference):
            socket, root, pid = process.socket, process.root, process.pid()
        with _node(ctx, base, registry, socket, root) as node:
            if side == ON_DISK:
                node.pull(ref)
            if side == PREWARMED:
                assert isinstance(process, AgentProcess)
                _prewarm(process, published)
            registry.clear_access_log()
            run = node.run(ref, workload.command, pull="if-not-present", timeout=_RUN_TIMEOUT)
            if run.exit_code != 0 or run.output[:1] != [workload.output]:
                raise BenchError(
                    f"{side}: exit {run.exit_code}, output {run.output[:3]}, "
                    f"stderr {run.stderr[-5:]}\ncontainerd log:\n{node.log(3000)}"
                )
            seconds = run.first_output_seconds
            if seconds is None:
                raise BenchError(f"{side}: the container wrote nothing")
            fetched = registry_bytes(registry, [layer.digest for layer in layers])
            peak = _vm_hwm(pid) if pid else 0
    steps = dict(run.timings)
    # From StartContainer's return to the first line: the process's own start and work.
    steps["first output"] = seconds - sum(v for k, v in run.timings.items() if k != "wait")
    return Sample(seconds, run.pull_seconds, fetched, peak, steps)


def learn_startup_files(ctx: Context, workload: Workload, published: Published) -> list[str]:
    """Run the workload once, lazily without background fill; the files it read, in order."""
    base = ctx.work / f"learn-{workload.image}"
    agent = AgentProcess(base / "agent", [published.registry.host], extra=["--no-background-fill"])
    try:
        socket = agent.base / "run" / "snapshotter.sock"
        with _node(ctx, base, published.registry, socket, agent.state_dir / "snapshotter") as node:
            run = node.run(published.esgz_ref, workload.command, timeout=_RUN_TIMEOUT)
            if run.exit_code != 0 or run.output[:1] != [workload.output]:
                raise BenchError(f"learning run: exit {run.exit_code}, stderr {run.stderr[-5:]}")
            entries: list[tuple[float, str]] = []
            for layer in agent.request("GET", "/v1/layers"):
                entries += [(e["seconds"], e["path"]) for e in agent.profile(layer["name"])]
    finally:
        agent.stop()
        _cleanup_dir(base)
    if not entries:
        raise BenchError("the agent's recorder saw no file read by the workload")
    return [path for _, path in sorted(entries)]


def _cleanup_dir(base: Path) -> None:
    if remove_mounts(base) == 0:
        shutil.rmtree(base, ignore_errors=True)


# -- the runs ----------------------------------------------------------------------------------

Results = dict[str, dict[str, dict[str, list[Sample]]]]  # workload -> link -> side -> samples


def run_link(ctx: Context, link: str, images: dict[str, Published], results: Results) -> None:
    for name, published in images.items():
        sides = [s for s in SIDES if s in (ctx.args.sides or WORKLOADS[name].sides)]
        by_side = results.setdefault(name, {}).setdefault(link, {s: [] for s in sides})
        for run in range(ctx.args.runs):
            shift = run % len(sides)  # rotate the order, so no side always runs first
            for side in sides[shift:] + sides[:shift]:
                base = ctx.work / f"{name[:2]}{link[0]}{sides.index(side)}{run}"
                try:
                    sample = measure(ctx, side, WORKLOADS[name], published, base)
                except Exception as exc:
                    ctx.fail(f"{name} over {link}: {side}, run {run + 1}", exc)
                    continue
                finally:
                    _cleanup_dir(base)
                by_side[side].append(sample)
                _say(
                    f"{name} over {link}: {side} run {run + 1}: {sample.seconds:.2f} s, "
                    f"{sample.fetched:,} bytes fetched"
                    + (f", peak RSS {sample.peak_rss / 2**20:.0f} MiB" if sample.peak_rss else "")
                )


def _run_all(ctx: Context, loopback: RegistryServer, results: Results) -> dict[str, Any]:
    images: dict[str, Published] = {}
    for name in ctx.args.images:
        try:
            images[name] = prepare_images(ctx, name, loopback)
        except Exception as exc:
            ctx.fail(f"preparing {name}", exc)
    info: dict[str, Any] = {
        name: {
            "gzip_bytes": sum(d.size for d in p.gzip_layers),
            "estargz_bytes": sum(d.size for d in p.esgz_layers),
            "layers": len(p.esgz_layers),
            "priority_zone_bytes": p.priority_zone,
        }
        for name, p in images.items()
    }
    if LOOPBACK in ctx.args.links:
        run_link(ctx, LOOPBACK, images, results)
    if "shaped" in ctx.args.links and images:
        with ShapedLink() as link:
            server = RegistryServer(
                ctx.work / "registry-netns",
                listen_host=link.peer_address,
                command_prefix=link.exec_prefix,
            )
            with server:
                shaped = {name: copy_images(p, server, name) for name, p in images.items()}
                link.shape(ctx.args.rate)
                run_link(ctx, f"{ctx.args.rate} link", shaped, results)
                _say(f"\nqdisc at the namespace's end:\n{link.qdisc_stats().strip()}")
    return info


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (median)")
    parser.add_argument(
        "--images", nargs="+", choices=list(WORKLOADS), default=list(DEFAULT_WORKLOADS)
    )
    parser.add_argument(
        "--links", nargs="+", choices=[LOOPBACK, "shaped"], default=[LOOPBACK, "shaped"]
    )
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=SIDES,
        default=None,
        help="the sides to measure (default: each workload's own)",
    )
    parser.add_argument("--rate", default="200mbit", help="tbf rate of the shaped link")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/bench"), help="where the table and plot go"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where the work dir goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if os.geteuid() != 0:
        _say("bench_coldstart needs root (containerd, FUSE, mounts, network namespaces)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lzcold-", dir=args.tmp))
    results: Results = {}
    report: dict[str, Any] = {
        **machine_facts(),
        "runs": args.runs,
        "rate": args.rate,
    }
    failures: list[str] = []
    try:
        with RegistryServer(work / "registry") as loopback:
            pause = push_pause_image(ensure_image("busybox"), loopback)
            ctx = Context(args, work, pause, loopback.host, failures, runtime_python())
            report["images"] = _run_all(ctx, loopback, results)
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        traceback.print_exception(exc, file=sys.stderr)
    finally:
        left = remove_mounts(work)
        if left:
            _say(f"{left} mounts are still under {work}; leaving it")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failures"] = failures
    summary = coldstart_report.summarize(results)
    report["results"] = summary
    report["targets"] = {
        workload: {
            link: coldstart_report.targets(workload, figures) for link, figures in links.items()
        }
        for workload, links in summary.items()
    }
    coldstart_report.print_tables(summary, args.runs)
    if summary:
        written = coldstart_report.write(summary, report, args.out)
        _say(f"wrote {', '.join(str(p) for p in written)}")
    print(f"\n{len(failures)} failures; {report['seconds']} s in all", flush=True)
    for failure in failures:
        print(f"  FAILED {failure}", flush=True)
    print(json.dumps(report), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
