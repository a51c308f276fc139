"""Filesystem benchmarks: the agent's lazily mounted layers against local disk, overlayfs and
the reference stargz-snapshotter (v0.18.2, FUSE passthrough off and on), side by side.

1. ``seq``: warm sequential read of a 256 MiB file, MB/s (10^6 bytes/s). The file on local
   disk (page cache warm) is the baseline. The agent is read right after a fresh mount of
   the layer (unmount + mount: a new inode, so the FUSE page cache is cold and every byte
   comes from the agent's chunk cache), then again (page cache warm), then under overlayfs.
   The reference (which also keeps the page cache) is read after that one file's pages are
   dropped (``posix_fadvise(DONTNEED)``, so from its own cache), then again. The machine's
   caches are never dropped. Target: the agent's chunk-cache read >= 1 GB/s.
2. ``small``: warm open+read of 2,000 files of 4 KiB, µs per file: local disk, overlayfs on
   local disk, the agent's layer (direct and under a container-style overlay), and the
   reference's mount of the same eStargz layer (direct and under the overlay containerd
   gets from it). Target: the agent no worse than the reference.
3. ``cold``: the python workload (``tests.images.PYTHON_PROBE_CODE`` in a chroot of the
   image's rootfs) on an empty cache, over loopback and over a link shaped to 200 Mbit/s
   (the registry in a network namespace behind a veth with tbf). Wall time from the first
   request (lazyimage: manifest, config and one mount request per layer; the reference:
   ``ctr-remote images rpull``, then an active snapshot and its overlay) to the workload's
   first line of output, and the layer bytes the registry served (its access log) against
   the bytes of the files the workload read (the agent's profile, sizes from the TOC).
   Background fetch is off on both sides unless ``--background-fetch``, so that the bytes are
   those the start needed.
4. ``memory``: the agent's RSS (VmRSS, and the peak VmHWM) with a layer whose TOC has
   100,000 entries mounted, walked, fully fetched and read. Target: < 200 MB.

Run it with ``scripts/bench-fs [--runs N] [--only SECTION ...]``. Each section prints its
table as it ends; the last line is one JSON object with every figure. The exit status is
non-zero when something measured is broken (wrong output or bytes, a component failing),
never because a figure misses its target.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
from lazyimage.fusefs import mounts_under
from lazyimage.oci import ImageConfig, Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.bench import synthetic
from tests.bench.mounts import mount_overlay, remove_mounts, umount
from tests.bench.reference import StargzReference, chain_ids
from tests.bench.report import machine_facts
from tests.bench.report import print_table as _print_table
from tests.bench.report import ratio as _ratio
from tests.bench.shaping import ShapedLink
from tests.fixtures.agent import AgentProcess
from tests.fixtures.images import ensure_image
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT
from tests.integration.agent.lazyimage_env import RemoteImage, push_estargz, registry_bytes
from tests.integration.convert.cli import lazyimage

SECTIONS = ("seq", "small", "cold", "memory")
MB = 1_000_000
_PROBE_TIMEOUT = 180.0
_FILL_TIMEOUT = 300.0
_READ_BLOCK = 1 << 20

LOCAL = "local disk"


class BenchError(RuntimeError):
    """Something the benchmark measures is broken (not merely slow)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like an exception, so every cleanup runs.
    raise SystemExit(128 + signum)


# -- figures and printing ----------------------------------------------------------------------


@dataclass
class Figures:
    """Samples by name, in insertion order of the names."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
            for name, values in self.samples.items()
        }


def _mib(size: float) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# -- context -----------------------------------------------------------------------------------


@dataclass
class PythonImage:
    remote: RemoteImage
    diff_ids: list[str]


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    registry: RegistryServer
    failures: list[str] = field(default_factory=list)
    big: tuple[synthetic.SyntheticImage, str] | None = None
    small: synthetic.SyntheticImage | None = None
    many: synthetic.SyntheticImage | None = None
    python: PythonImage | None = None

    def fail(self, what: str, exc: BaseException) -> None:
        message = f"{what}: {type(exc).__name__}: {exc}"
        self.failures.append(message if len(message) < 600 else message[:600] + " ...")
        print(f"\nFAILED {message}", file=sys.stderr, flush=True)
        traceback.print_exception(exc, file=sys.stderr)

    def wants(self, section: str) -> bool:
        return section in self.args.only


@contextlib.contextmanager
def running_agent(base: Path, hosts: Sequence[str]) -> Iterator[AgentProcess]:
    """The real agent with its state under ``base``; overlays on its layers are expected
    under ``base`` too, and everything goes at exit."""
    agent = AgentProcess(base, hosts)
    try:
        yield agent
    finally:
        for mount in reversed(mounts_under(base)):
            if not mount.is_fuse:
                umount(mount.mountpoint)
        agent.stop()
        remove_mounts(base)


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _fuse_ops(agent: AgentProcess) -> dict[str, tuple[float, float]]:
    """FUSE operations the agent answered so far: operation -> (count, seconds)."""
    ops: dict[str, list[float]] = {}
    prefix = "lazyimage_fuse_operation_duration_seconds_"
    for series, value in agent.metrics().items():
        for index, kind in enumerate(("count", "sum")):
            head = f'{prefix}{kind}{{operation="'
            if series.startswith(head):
                op = series[len(head) :].split('"', 1)[0]
                ops.setdefault(op, [0.0, 0.0])[index] = value
    return {op: (count, seconds) for op, (count, seconds) in ops.items()}


def _ops_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[int, float]]:
    delta = {}
    for op, (count, seconds) in after.items():
        count0, seconds0 = before.get(op, (0.0, 0.0))
        if count > count0:
            delta[op] = (int(count - count0), seconds - seconds0)
    return delta


def _resolve(host: str, ref: str) -> tuple[list[Any], list[str]]:
    """Manifest and config, as containerd would fetch them before asking the snapshotter."""

    async def fetch() -> tuple[list[Any], list[str]]:
        async with RegistryClient(insecure_registries=(host,)) as client:
            reference = Reference.parse(ref)
            fetched = await client.get_manifest(reference)
            manifest = Manifest.parse(fetched.data, fetched.media_type)
            config = ImageConfig.parse(await client.get_blob(reference, manifest.config.digest))
            return list(manifest.layers), config.diff_ids

    return anyio.run(fetch)


# -- reading -----------------------------------------------------------------------------------


def _read_seconds(path: Path, size: int) -> float:
    """Read ``path`` start to end in 1 MiB reads; the seconds it took."""
    buffer = bytearray(_READ_BLOCK)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            total += count
    elapsed = time.perf_counter() - started
    if total != size:
        raise BenchError(f"read {total} bytes from {path}, expected {size}")
    return elapsed


def _drop_page_cache(path: Path) -> None:
    """Drop this one file's clean pages from the page cache (nothing else's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _verify_file(path: Path, size: int, digest: str) -> None:
    hasher = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(_READ_BLOCK):
            hasher.update(block)
            total += len(block)
    if total != size or hasher.hexdigest() != digest:
        raise BenchError(f"{path}: {total} bytes with sha256 {hasher.hexdigest()}, expected {size}")


def _open_read_pass(paths: Sequence[str]) -> float:
    """Open, read and close every path once; µs per file."""
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 8192)
        os.close(fd)
    return (time.perf_counter() - started) / len(paths) * 1e6


def _verify_small(root: Path, files: Sequence[str], size: int) -> None:
    for index, rel in enumerate(files):
        data = (root / rel).read_bytes()
        if data != synthetic.small_files_content(index, size):
            raise BenchError(f"{root / rel}: wrong content ({len(data)} bytes)")


def _run_probe(root: Path, timeout: float = _PROBE_TIMEOUT) -> float:
    """Run the python workload chrooted in ``root``; the perf_counter time of its first line.

    Raises BenchError if it fails or prints anything but the expected output."""
    proc = subprocess.Popen(
        ["chroot", str(root), "/usr/bin/python3", "-c", PYTHON_PROBE_CODE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    first_line_at: float | None = None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, out)
            selector.register(proc.stderr, selectors.EVENT_READ, err)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"the workload in {root} ran over {timeout} s")
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is out and first_line_at is None and b"\n" in out:
                        first_line_at = time.perf_counter()
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0 or text != PYTHON_PROBE_OUTPUT or first_line_at is None:
        raise BenchError(
            f"the workload in {root} exited {proc.returncode} with {text!r}, expected "
            f"{PYTHON_PROBE_OUTPUT!r}; stderr: {err.decode(errors='replace')[-1500:]}"
        )
    return first_line_at


# -- 1 and 2: warm reads -----------------------------------------------------------------------


def _new_mount(ref: StargzReference, image_ref: str) -> Path:
    """rpull a one-layer image; the snapshotter's FUSE mount of its layer."""
    before = set(ref.layer_mounts())
    ref.rpull(image_ref)
    added = [p for p in ref.layer_mounts() if p not in before]
    if len(added) != 1:
        raise BenchError(f"rpull of {image_ref} added {len(added)} layer mounts, expected 1")
    return added[0]


def warm_phase(ctx: Context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(running_agent(ctx.work / "agent-warm", [ctx.registry.host]))
        refs: dict[str, tuple[StargzReference, dict[str, Path]]] = {}
        if not ctx.args.no_reference:
            for passthrough in (False, True):
                mode = "on" if passthrough else "off"
                try:
                    ref = stack.enter_context(
                        StargzReference(
                            ctx.work / f"ref-warm-{mode}",
                            passthrough=passthrough,
                            insecure_hosts=[ctx.registry.host],
                        )
                    )
                    layers: dict[str, Path] = {}
                    if ctx.wants("seq") and ctx.big is not None:
                        layers["big"] = _new_mount(ref, ctx.big[0].remote.ref)
                    if ctx.wants("small") and ctx.small is not None:
                        layers["small"] = _new_mount(ref, ctx.small.remote.ref)
                    refs[ref.label] = (ref, layers)
                except Exception as exc:
                    ctx.fail(f"starting the reference (passthrough {mode})", exc)
        if ctx.wants("seq"):
            try:
                results["seq"] = bench_seq(ctx, agent, refs)
            except Exception as exc:
                ctx.fail("seq", exc)
        if ctx.wants("small"):
            try:
                results["small"] = bench_small(ctx, agent, refs)
            except Exception as exc:
                ctx.fail("small", exc)
    return results


def bench_seq(
    ctx: Context, agent: AgentProcess, refs: dict[str, tuple[StargzReference, dict[str, Path]]]
) -> dict[str, Any]:
    assert ctx.big is not None
    image, digest = ctx.big
    rel = image.files[0]
    local = image.local / rel
    size = local.stat().st_size
    figures = Figures()
    first: dict[str, float] = {}

    def mount() -> dict[str, Any]:
        return agent.mount(image.remote.ref, image.layer.digest, image.toc_digest, background=False)

    _verify_file(local, size, digest)  # and the local copy is in the page cache now
    layer = mount()
    path = Path(layer["path"]) / rel
    first["agent, first read (fetched over loopback)"] = size / _read_seconds(path, size) / MB
    _verify_file(path, size, digest)
    for label, (_, layers) in refs.items():
        ref_path = layers["big"] / rel
        first[f"{label}, first read (fetched over loopback)"] = (
            size / _read_seconds(ref_path, size) / MB
        )
        _verify_file(ref_path, size, digest)

    overlay_base = agent.base / "seq-overlay"
    requests: list[tuple[int, float, float]] = []  # FUSE reads, their handler seconds, wall
    for run in range(ctx.args.runs):
        figures.add(LOCAL, size / _read_seconds(local, size) / MB)
        agent.request("DELETE", f"/v1/layers/{layer['name']}")
        layer = mount()  # a new inode number: nothing of it in the page cache
        path = Path(layer["path"]) / rel
        ops_before = _fuse_ops(agent)
        seconds = _read_seconds(path, size)
        figures.add("agent, from its chunk cache (fresh mount)", size / seconds / MB)
        reads = _ops_delta(ops_before, _fuse_ops(agent)).get("read", (0, 0.0))
        requests.append((reads[0], reads[1], seconds))
        figures.add("agent, FUSE page cache warm", size / _read_seconds(path, size) / MB)
        merged = mount_overlay([Path(layer["path"])], overlay_base / str(run))
        try:
            figures.add(
                "agent under overlayfs, page cache warm",
                size / _read_seconds(merged / rel, size) / MB,
            )
        finally:
            umount(merged)
        for label, (_, layers) in refs.items():
            ref_path = layers["big"] / rel
            _drop_page_cache(ref_path)  # the reference keeps the page cache too
            seconds = _read_seconds(ref_path, size)
            figures.add(f"{label}, from its cache (page cache dropped)", size / seconds / MB)
            seconds = _read_seconds(ref_path, size)
            figures.add(f"{label}, page cache warm", size / seconds / MB)
        print(f"seq: run {run + 1}/{ctx.args.runs} done", file=sys.stderr, flush=True)
    _verify_file(path, size, digest)

    base = figures.median(LOCAL)
    rows = [
        [name, f"{figures.median(name):,.0f}", _ratio(figures.median(name), base)]
        for name in figures.samples
    ]
    rows += [[name, f"{value:,.0f}", "(1 run)"] for name, value in first.items()]
    met = figures.median("agent, from its chunk cache (fresh mount)") >= 1000
    _print_table(
        f"1. warm sequential read of a {_mib(size)} file, MB/s, median of {ctx.args.runs} runs "
        f"(target: agent from its chunk cache >= 1000 MB/s: {'met' if met else 'NOT met'})",
        ["path", "MB/s", "vs local disk"],
        rows,
    )
    count, handler, wall = (statistics.median(values) for values in zip(*requests, strict=True))
    if count:
        print(
            f"  agent, from its chunk cache: {count:.0f} FUSE reads of {size / count / 1024:.0f} "
            f"KiB on average, {handler / count * 1e3:.2f} ms each in the agent's handler "
            f"(summed over concurrent reads: {handler / wall:.0%} of the wall time)"
        )
    return {
        "size": size,
        "mb_per_s": figures.summary(),
        "first_read_mb_per_s": first,
        "chunk_cache_fuse_reads": count,
        "chunk_cache_handler_s": handler,
    }


def bench_small(
    ctx: Context, agent: AgentProcess, refs: dict[str, tuple[StargzReference, dict[str, Path]]]
) -> dict[str, Any]:
    assert ctx.small is not None
    image = ctx.small
    size = (image.local / image.files[0]).stat().st_size
    base = ctx.work / "small"
    roots: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:
        roots[LOCAL] = image.local
        merged = mount_overlay([image.local], base / "local")
        stack.callback(umount, merged)
        roots["overlayfs on local disk"] = merged

        layer = agent.mount(
            image.remote.ref, image.layer.digest, image.toc_digest, background=False
        )
        roots["agent layer, direct"] = Path(layer["path"])
        merged = mount_overlay([Path(layer["path"])], agent.base / "small-overlay")
        stack.callback(umount, merged)
        roots["agent layer under overlayfs"] = merged

        for label, (ref, layers) in refs.items():
            roots[f"{label}, direct"] = layers["small"]
            key = f"small-{len(roots)}"
            target = ref.mount_rootfs(key, image.diff_id, ref.base / "small-rootfs")
            stack.callback(ref.unmount_rootfs, target)
            roots[f"{label}, under overlayfs"] = target

        # Two untimed passes: the first fetches (and checks every byte), the second makes
        # sure every cache on the way is warm.
        paths = {name: [str(root / rel) for rel in image.files] for name, root in roots.items()}
        for name, root in roots.items():
            _verify_small(root, image.files, size)
            _open_read_pass(paths[name])
        figures = Figures()
        names = list(roots)
        for index in range(ctx.args.passes):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                figures.add(name, _open_read_pass(paths[name]))
        for root in roots.values():
            _verify_small(root, image.files, size)
        # What a warm pass costs the agent: FUSE requests that reach it, per file.
        warm_ops: dict[str, dict[str, int]] = {}
        for name in ("agent layer, direct", "agent layer under overlayfs"):
            before = _fuse_ops(agent)
            _open_read_pass(paths[name])
            delta = _ops_delta(before, _fuse_ops(agent))
            warm_ops[name] = {op: count for op, (count, _) in delta.items()}

    local = figures.median(LOCAL)
    local_overlay = figures.median("overlayfs on local disk")
    rows = []
    for name in names:
        value = figures.median(name)
        rows.append(
            [
                name,
                f"{value:.1f}",
                f"{min(figures.samples[name]):.1f}",
                _ratio(value, local),
                _ratio(value, local_overlay),
            ]
        )
    _print_table(
        f"2. warm open+read of {len(image.files):,} files of {size} bytes, µs per file, "
        f"median of {ctx.args.passes} passes",
        ["path", "µs/file", "min", "vs local", "vs local overlay"],
        rows,
    )
    comparisons: dict[str, float] = {}
    for label in refs:
        for kind in ("direct", "under overlayfs"):
            ours = figures.median(
                "agent layer, direct" if kind == "direct" else "agent layer under overlayfs"
            )
            theirs = figures.median(f"{label}, {kind}")
            comparisons[f"{label}, {kind}"] = theirs / ours
    if comparisons:
        print("  reference µs / agent µs (above 1: the agent is faster):")
        for name, value in comparisons.items():
            print(f"    {name:52} {value:6.2f}")
    for name, ops in warm_ops.items():
        shown = ", ".join(f"{op} {count}" for op, count in sorted(ops.items())) or "none"
        print(f"  FUSE requests reaching the agent in one warm pass, {name}: {shown}")
    return {
        "files": len(image.files),
        "file_size": size,
        "us_per_file": figures.summary(),
        "reference_over_agent": comparisons,
        "agent_fuse_requests_warm_pass": warm_ops,
    }


# -- 3: cold start -----------------------------------------------------------------------------


@dataclass
class ColdRun:
    total: float  # first request -> first line of output
    mount: float  # first request -> rootfs mounted (lazyimage: layer mounts; reference: rpull)
    run: float  # rootfs mounted -> first line
    fetched: int  # layer bytes the registry served
    requests: int  # layer GETs the registry served (a multi-range GET counts once)
    toc: int = 0  # of which footer and TOC reads (lazyimage only)
    read: int = 0  # bytes of the files the workload read (lazyimage's profile)
    fetch_s: float = 0.0  # lazyimage: seconds in range requests (summed over requests)
    fuse_reads: int = 0  # lazyimage: FUSE reads answered
    fuse_read_s: float = 0.0  # lazyimage: seconds in FUSE read handlers (summed)


def _cold_lazyimage(
    registry: RegistryServer, image: PythonImage, base: Path, *, background: bool
) -> ColdRun:
    with running_agent(base, [registry.host]) as agent:
        registry.clear_access_log()
        ops_before = _fuse_ops(agent)
        started = time.perf_counter()
        layers, _ = _resolve(registry.host, image.remote.ref)
        mounted = [
            agent.mount(
                image.remote.ref, layer.digest, image.remote.toc(layer), background=background
            )
            for layer in layers
        ]
        merged = mount_overlay([Path(m["path"]) for m in reversed(mounted)], base / "rootfs")
        mounted_at = time.perf_counter()
        first_line = _run_probe(merged)
        digests = [layer.digest for layer in layers]
        fetched = registry_bytes(registry, digests)
        requests = sum(len(registry.blob_gets(digest)) for digest in digests)
        metrics = agent.metrics()
        toc = sum(
            int(value)
            for series, value in metrics.items()
            if series.startswith("lazyimage_fetched_bytes_total{") and 'reason="toc"' in series
        )
        fetch_s = sum(
            value
            for series, value in metrics.items()
            if series.startswith("lazyimage_fetch_duration_seconds_sum{")
        )
        fuse_reads, fuse_read_s = _ops_delta(ops_before, _fuse_ops(agent)).get("read", (0, 0.0))
        read = 0
        for layer in mounted:
            for entry in agent.profile(layer["name"]):
                read += os.lstat(Path(layer["path"]) / entry["path"]).st_size
        if read == 0:
            raise BenchError("the agent's profile lists no file read by the workload")
    return ColdRun(
        total=first_line - started,
        mount=mounted_at - started,
        run=first_line - mounted_at,
        fetched=fetched,
        requests=requests,
        toc=toc,
        read=read,
        fetch_s=fetch_s,
        fuse_reads=fuse_reads,
        fuse_read_s=fuse_read_s,
    )


def _cold_reference(
    registry: RegistryServer,
    image: PythonImage,
    base: Path,
    *,
    passthrough: bool,
    background: bool,
) -> ColdRun:
    with StargzReference(
        base, passthrough=passthrough, insecure_hosts=[registry.host], background_fetch=background
    ) as ref:
        registry.clear_access_log()
        started = time.perf_counter()
        ref.rpull(image.remote.ref)
        rootfs = ref.mount_rootfs("cold", chain_ids(image.diff_ids)[-1], base / "rootfs")
        mounted_at = time.perf_counter()
        first_line = _run_probe(rootfs)
        digests = [layer.digest for layer in image.remote.layers]
        fetched = registry_bytes(registry, digests)
        requests = sum(len(registry.blob_gets(digest)) for digest in digests)
    return ColdRun(
        total=first_line - started,
        mount=mounted_at - started,
        run=first_line - mounted_at,
        fetched=fetched,
        requests=requests,
    )


def _cold_runs(
    ctx: Context, registry: RegistryServer, image: PythonImage, link: str
) -> dict[str, list[ColdRun]]:
    background = ctx.args.background_fetch
    sides: list[tuple[str, Callable[[Path], ColdRun]]] = [
        ("lazyimage", functools.partial(_cold_lazyimage, registry, image, background=background))
    ]
    if not ctx.args.no_reference:
        for passthrough in (False, True):
            reference = functools.partial(
                _cold_reference, registry, image, passthrough=passthrough, background=background
            )
            sides.append((f"reference, passthrough {'on' if passthrough else 'off'}", reference))
    results: dict[str, list[ColdRun]] = {name: [] for name, _ in sides}
    for run in range(ctx.args.runs):
        shift = run % len(sides)
        for name, measure in sides[shift:] + sides[:shift]:
            # Short: containerd's sockets go below it, and unix socket paths are short.
            index = [n for n, _ in sides].index(name)
            base = ctx.work / f"cold-{link[0]}{index}-{run}"
            try:
                done = measure(base)
            except Exception as exc:
                ctx.fail(f"cold {link} {name} run {run + 1}", exc)
                continue
            finally:
                if remove_mounts(base) == 0:
                    shutil.rmtree(base, ignore_errors=True)
            results[name].append(done)
            print(
                f"cold {link}: {name} run {run + 1}: {done.total:.2f} s, "
                f"{done.fetched:,} bytes fetched",
                file=sys.stderr,
                flush=True,
            )
    return results


def _local_python(ctx: Context) -> list[float]:
    """The workload on the image unpacked on local disk (page cache warm): the floor."""
    image = ensure_image("python")
    root = image.unpack(ctx.work / "python-local")
    _run_probe(root)  # warm the page cache
    times = []
    for _ in range(ctx.args.runs):
        started = time.perf_counter()
        times.append(_run_probe(root) - started)
    return times


def _shaped_runs(ctx: Context, image: PythonImage) -> dict[str, dict[str, list[ColdRun]]]:
    """The cold runs with the registry in a network namespace behind a tbf-shaped veth."""
    with ShapedLink() as link:
        server = RegistryServer(
            ctx.work / "registry-netns",
            listen_host=link.peer_address,
            command_prefix=link.exec_prefix,
        )
        with server:
            target = f"{server.host}/bench/python:esgz"
            done = lazyimage(
                "copy", image.remote.ref, target,
                "--insecure-registry", ctx.registry.host,
                "--insecure-registry", server.host,
            )  # fmt: skip
            if done.code != 0:
                raise BenchError(f"copying the image into the namespace failed: {done.err}")
            shaped = PythonImage(RemoteImage(target, image.remote.layers), image.diff_ids)
            link.shape(ctx.args.rate)
            runs = _cold_runs(ctx, server, shaped, "shaped")
            print(f"\nqdisc at the namespace's end:\n{link.qdisc_stats().strip()}", file=sys.stderr)
    return {f"shaped {ctx.args.rate}": runs}


def bench_cold(ctx: Context) -> dict[str, Any]:
    assert ctx.python is not None
    image = ctx.python
    local = _local_python(ctx)
    by_link: dict[str, dict[str, list[ColdRun]]] = {}
    by_link["loopback"] = _cold_runs(ctx, ctx.registry, image, "loopback")
    if not ctx.args.no_shaping:
        try:
            by_link.update(_shaped_runs(ctx, image))
        except Exception as exc:
            ctx.fail("cold over the shaped link", exc)

    report: dict[str, Any] = {
        "local_disk_s": statistics.median(local),
        "image_layer_bytes": image.remote.total_size,
        "background_fetch": ctx.args.background_fetch,
        "links": {},
    }
    read_all = [r.read for runs in by_link.values() for r in runs.get("lazyimage", [])]
    read = int(statistics.median(read_all)) if read_all else 0
    for link_name, sides in by_link.items():
        rows = []
        link_report: dict[str, Any] = {}
        ours = sides.get("lazyimage") or []
        ours_total = statistics.median(r.total for r in ours) if ours else 0.0
        for name, runs in sides.items():
            if not runs:
                rows.append([name, "failed", "", "", "", "", "", ""])
                continue
            total = statistics.median(r.total for r in runs)
            mount = statistics.median(r.mount for r in runs)
            run = statistics.median(r.run for r in runs)
            fetched = int(statistics.median(r.fetched for r in runs))
            toc = int(statistics.median(r.toc for r in runs))
            vs = "-" if name == "lazyimage" or not ours_total else f"{total / ours_total:.2f}x"
            requests = int(statistics.median(r.requests for r in runs))
            rows.append(
                [
                    name,
                    f"{total:.2f}",
                    f"{mount:.2f}",
                    f"{run:.2f}",
                    f"{fetched:,}",
                    f"{requests:,}",
                    _ratio(fetched, read) if read else "-",
                    vs,
                ]
            )
            link_report[name] = {
                "total_s": total,
                "mount_s": mount,
                "run_s": run,
                "fetched_bytes": fetched,
                "range_requests": requests,
                "fetched_over_read": fetched / read if read else None,
                "runs_total_s": [r.total for r in runs],
            }
            if name == "lazyimage":
                link_report[name]["fetch_s"] = statistics.median(r.fetch_s for r in runs)
                link_report[name]["fuse_reads"] = statistics.median(r.fuse_reads for r in runs)
                link_report[name]["fuse_read_s"] = statistics.median(r.fuse_read_s for r in runs)
                link_report[name]["toc_bytes"] = toc
                link_report[name]["fetched_minus_toc_over_read"] = (
                    (fetched - toc) / read if read else None
                )
        report["links"][link_name] = link_report
        _print_table(
            f"3. cold python workload over {link_name}, median of {ctx.args.runs} runs "
            f"(seconds; bytes read by the workload: {read:,}; local disk: "
            f"{statistics.median(local):.2f} s)",
            [
                "side",
                "total s",
                "mount/pull s",
                "run s",
                "fetched",
                "GETs",
                "fetched/read",
                "vs lazyimage",
            ],
            rows,
        )
        if "lazyimage" in link_report and read:
            entry = link_report["lazyimage"]
            print(
                f"  lazyimage: {entry['toc_bytes']:,} of the fetched bytes are footers and TOCs; "
                f"(fetched - TOCs) / read = {entry['fetched_minus_toc_over_read']:.2f} "
                f"(target <= 1.2); total against local disk "
                f"{_ratio(entry['total_s'], report['local_disk_s'])}"
            )
            print(
                f"  lazyimage: {entry['range_requests']} range requests took "
                f"{entry['fetch_s']:.2f} s in all in the fetcher "
                f"({entry['fetch_s'] / max(entry['range_requests'], 1) * 1e3:.1f} ms each); "
                f"{entry['fuse_reads']:.0f} FUSE reads took {entry['fuse_read_s']:.2f} s in all "
                "in the agent's handlers"
            )
    report["read_bytes"] = read
    return report


# -- 4: memory ---------------------------------------------------------------------------------


def _cached_chunks(agent: AgentProcess) -> int:
    return int(agent.request("GET", "/status")["cache"]["chunks"])


def _walk(root: Path) -> int:
    """lstat every entry under ``root``; how many there were."""
    entries = 0
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lstat(os.path.join(directory, name))
            entries += 1
    return entries


def bench_memory(ctx: Context) -> dict[str, Any]:
    """The layer is mounted without background fill, walked, then mounted again with the
    fill on (as the agent mounts by default) and, once every chunk is cached, read whole.
    VmHWM is the process's peak so far, so each row's peak includes the rows above it."""
    assert ctx.many is not None
    image = ctx.many
    expected = image.entries - 1  # the landmark is hidden

    def mount(background: bool) -> dict[str, Any]:
        return agent.mount(
            image.remote.ref, image.layer.digest, image.toc_digest, background=background
        )

    with running_agent(ctx.work / "agent-memory", [ctx.registry.host]) as agent:
        pid = agent.proc.pid
        samples: dict[str, dict[str, int]] = {"idle": _memory(pid)}
        started = time.perf_counter()
        layer = mount(False)
        mount_seconds = time.perf_counter() - started
        samples["layer mounted (TOC parsed)"] = _memory(pid)
        if (walked := _walk(Path(layer["path"]))) != expected:
            raise BenchError(f"walked {walked} entries in the layer, expected {expected}")
        samples["tree walked (lstat of every entry)"] = _memory(pid)

        agent.request("DELETE", f"/v1/layers/{layer['name']}")
        layer = mount(True)
        root = Path(layer["path"])
        deadline = time.monotonic() + _FILL_TIMEOUT
        fill_started = time.perf_counter()
        # Every file holds distinct bytes, so the fill is over when the content-addressed
        # cache holds one chunk per file.
        while (cached := _cached_chunks(agent)) < len(image.files):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the background fill cached {cached} of {len(image.files)} chunks "
                    f"in {_FILL_TIMEOUT} s"
                )
            time.sleep(0.2)
        fill_seconds = time.perf_counter() - fill_started
        samples["mounted again, background fill done"] = _memory(pid)

        read_started = time.perf_counter()
        for index, rel in enumerate(image.files):
            if (root / rel).read_bytes() != b"%d\n" % index:
                raise BenchError(f"{rel}: wrong content")
        read_seconds = time.perf_counter() - read_started
        if (walked := _walk(root)) != expected:
            raise BenchError(f"walked {walked} entries in the layer, expected {expected}")
        samples["every file read, tree walked"] = _memory(pid)

    mounted = samples["tree walked (lstat of every entry)"]
    peak = max(s["VmHWM"] for s in samples.values())
    steady = samples["every file read, tree walked"]["VmRSS"]
    rows = [
        [name, f"{s['VmRSS'] / MB:.1f} MB", f"{s['VmHWM'] / MB:.1f} MB"]
        for name, s in samples.items()
    ]

    def verdict(value: int) -> str:
        return "met" if value < 200 * MB else "NOT met"

    _print_table(
        f"4. agent memory with a {image.entries:,}-entry TOC layer ({image.blob_size:,} bytes; "
        f"mount {mount_seconds:.2f} s, background fill {fill_seconds:.1f} s, read of "
        f"{len(image.files):,} files {read_seconds:.1f} s)",
        ["state", "VmRSS", "VmHWM (peak so far)"],
        rows,
    )
    print(
        f"  target < 200 MB: mounted and walked {mounted['VmRSS'] / MB:.0f} MB "
        f"({verdict(mounted['VmRSS'])}), peak while mounting {mounted['VmHWM'] / MB:.0f} MB "
        f"({verdict(mounted['VmHWM'])}); after the fill and a full read {steady / MB:.0f} MB "
        f"({verdict(steady)}), peak {peak / MB:.0f} MB ({verdict(peak)})"
    )
    return {
        "entries": image.entries,
        "blob_bytes": image.blob_size,
        "mount_s": mount_seconds,
        "fill_s": fill_seconds,
        "read_all_s": read_seconds,
        "samples": samples,
        "mounted_rss_bytes": mounted["VmRSS"],
        "mount_peak_bytes": mounted["VmHWM"],
        "steady_bytes": steady,
        "peak_bytes": peak,
    }


# -- main --------------------------------------------------------------------------------------


def _prepare_images(ctx: Context) -> None:
    work = ctx.work / "images"
    work.mkdir()
    started = time.perf_counter()
    if ctx.wants("seq"):
        ctx.big = synthetic.big_file(ctx.registry, work, size=ctx.args.big_size)
    if ctx.wants("small"):
        ctx.small = synthetic.small_files(ctx.registry, work, count=ctx.args.small_count)
    if ctx.wants("memory"):
        ctx.many = synthetic.many_entries(ctx.registry, work, entries=ctx.args.entries)
    if ctx.wants("cold"):
        remote = push_estargz(ensure_image("python"), ctx.registry, "bench/python")
        _, diff_ids = _resolve(ctx.registry.host, remote.ref)
        ctx.python = PythonImage(remote, diff_ids)
    print(
        f"images built and pushed in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of seq and cold (median)")
    parser.add_argument("--passes", type=int, default=7, help="timed passes of small")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rate", default="200mbit", help="tbf rate of the shaped link")
    parser.add_argument("--no-shaping", action="store_true", help="cold start on loopback only")
    parser.add_argument("--no-reference", action="store_true", help="lazyimage figures only")
    parser.add_argument(
        "--background-fetch",
        action="store_true",
        help="leave background fetch on during cold starts (both sides)",
    )
    parser.add_argument("--big-size", type=int, default=256 << 20, help=argparse.SUPPRESS)
    parser.add_argument("--small-count", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, default=None, help="where the work dir goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if os.geteuid() != 0:
        print("bench_fs needs root (FUSE, mounts, network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lazyimage-bench-fs-", dir=args.tmp))
    report: dict[str, Any] = {
        **machine_facts(),
        "runs": args.runs,
        "passes": args.passes,
    }
    failures: list[str] = []
    try:
        with RegistryServer(work / "registry") as registry:
            ctx = Context(args, work, registry, failures)
            try:
                _prepare_images(ctx)
            except Exception as exc:
                ctx.fail("preparing the images", exc)
            else:
                if ctx.wants("seq") or ctx.wants("small"):
                    report.update(warm_phase(ctx))
                if ctx.wants("cold"):
                    try:
                        report["cold"] = bench_cold(ctx)
                    except Exception as exc:
                        ctx.fail("cold", exc)
                if ctx.wants("memory"):
                    try:
                        report["memory"] = bench_memory(ctx)
                    except Exception as exc:
                        ctx.fail("memory", exc)
    finally:
        left = remove_mounts(work)
        if left:
            print(f"{left} mounts are still under {work}; leaving it", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["failures"] = failures
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{len(failures)} failures; {report['seconds']} s in all", flush=True)
    for failure in failures:
        print(f"  FAILED {failure}", flush=True)
    print(json.dumps(report), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
