"""Conversion benchmark: ``lazyimage convert`` against the reference ``ctr-remote`` converter.

Both convert the same gzip python test image from a loopback registry to eStargz in the same
run, on the same machine, several times; the report gives medians, the ratio, and the size of
each result against the gzip source.

- lazyimage: ``lazyimage convert REG/bench/python:gzip REG/bench/python:lazyimage`` (pull,
  convert and push in one command).
- reference: ``ctr content fetch`` into a fresh containerd, ``ctr-remote images convert
  --estargz --oci``, and ``ctr images push``; timed per step and in total.

Run it with ``scripts/bench-convert [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from lazyimage.oci import Manifest
from lazyimage.registry import Reference, RegistryClient

from tests.fixtures.containerd import ContainerdServer
from tests.fixtures.gotools import go_tool
from tests.fixtures.images import ensure_image
from tests.fixtures.registry import RegistryServer

_NAMESPACE = "bench"
_CTR_TIMEOUT = 900


def _run(cmd: Sequence[str], timeout: float = _CTR_TIMEOUT) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def _layer_sizes(registry: RegistryServer, ref_text: str) -> list[int]:
    async def fetch() -> list[int]:
        async with RegistryClient(insecure_registries=(registry.host,)) as client:
            fetched = await client.get_manifest(Reference.parse(ref_text))
            manifest = Manifest.parse(fetched.data, fetched.media_type)
            return [layer.size for layer in manifest.layers]

    return anyio.run(fetch)


def _lazyimage(registry: RegistryServer, source: str, target: str) -> float:
    return _run(
        [
            sys.executable,
            "-m",
            "lazyimage.cli",
            "convert",
            source,
            target,
            "--insecure-registry",
            registry.host,
        ]
    )


def _reference(
    ctr_remote: Path, containerd: ContainerdServer, source: str, target: str
) -> dict[str, float]:
    # ctr-remote embeds containerd 2's client, whose pull and push need services that
    # containerd 1.6 lacks; Debian's ctr (1.6) moves the content, ctr-remote converts it.
    ctr = ["ctr", "--address", str(containerd.socket), "--namespace", _NAMESPACE]
    remote = [str(ctr_remote), "--address", str(containerd.socket), "--namespace", _NAMESPACE]
    times = {
        "pull": _run([*ctr, "content", "fetch", "--plain-http", source]),
        "convert": _run([*remote, "images", "convert", "--estargz", "--oci", source, target]),
        "push": _run([*ctr, "images", "push", "--plain-http", target]),
    }
    # Removing the images with --sync waits for the garbage collector, so the next run's
    # fetch starts from an empty content store, as lazyimage's does.
    _run([*ctr, "images", "rm", "--sync", source, target])
    times["total"] = sum(times.values())
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="python")
    args = parser.parse_args(argv)

    image = ensure_image(args.image)
    ctr_remote = go_tool("ctr-remote")
    with tempfile.TemporaryDirectory(prefix="lazyimage-bench-") as tmp:
        work = Path(tmp)
        with (
            RegistryServer(work / "registry") as registry,
            ContainerdServer(work / "containerd") as containerd,
        ):
            source = f"{registry.host}/{_NAMESPACE}/{args.image}:gzip"
            _run(
                [
                    sys.executable,
                    "-m",
                    "lazyimage.cli",
                    "copy",
                    f"oci:{image.layout}:{image.tag}",
                    source,
                    "--insecure-registry",
                    registry.host,
                ]
            )
            ours: list[float] = []
            theirs: list[dict[str, float]] = []
            for run in range(args.runs):
                ours_ref = f"{registry.host}/{_NAMESPACE}/{args.image}:lazyimage-{run}"
                theirs_ref = f"{registry.host}/{_NAMESPACE}/{args.image}:reference-{run}"
                # Alternate the order so neither side always runs on a warmer machine.
                if run % 2:
                    theirs.append(_reference(ctr_remote, containerd, source, theirs_ref))
                    ours.append(_lazyimage(registry, source, ours_ref))
                else:
                    ours.append(_lazyimage(registry, source, ours_ref))
                    theirs.append(_reference(ctr_remote, containerd, source, theirs_ref))
                print(
                    f"run {run + 1}/{args.runs}: lazyimage {ours[-1]:.2f} s, "
                    f"reference {theirs[-1]['total']:.2f} s",
                    file=sys.stderr,
                )
            sizes = {
                "gzip source": sum(_layer_sizes(registry, source)),
                "lazyimage": sum(
                    _layer_sizes(registry, f"{registry.host}/{_NAMESPACE}/{args.image}:lazyimage-0")
                ),
                "reference": sum(
                    _layer_sizes(registry, f"{registry.host}/{_NAMESPACE}/{args.image}:reference-0")
                ),
            }
    ours_s = statistics.median(ours)
    steps = {k: statistics.median(t[k] for t in theirs) for k in theirs[0]}
    report = {
        "image": args.image,
        "runs": args.runs,
        "lazyimage_s": ours_s,
        "reference_s": steps,
        "sizes": sizes,
    }
    print(
        f"\nconversion of the {args.image} image, median of {args.runs} runs "
        "(pull + convert + push over loopback):"
    )
    print(f"  lazyimage convert          {ours_s:8.2f} s")
    print(
        f"  reference ctr-remote       {steps['total']:8.2f} s  (pull {steps['pull']:.2f}, "
        f"convert {steps['convert']:.2f}, push {steps['push']:.2f})"
    )
    print(f"  speed-up                   {steps['total'] / ours_s:8.2f} x")
    print("  layer bytes:")
    for name, size in sizes.items():
        print(f"    {name:22} {size:>12,}  ({size / sizes['gzip source']:.3f} of gzip)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
