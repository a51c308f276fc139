"""The ``convert`` and ``inspect`` commands: argument handling around lazyimage.convert."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any, TextIO

from lazyimage.cli._progress import ConvertProgress, format_bytes
from lazyimage.convert import (
    ConvertOptions,
    ConvertResult,
    ImageInspection,
    ImageStore,
    LayoutLocation,
    LayoutStore,
    RegistryStore,
    convert_image,
    copy_image,
    inspect_image,
    parse_location,
)
from lazyimage.errors import InvalidReferenceError
from lazyimage.estargz import BuildOptions, read_priority_list
from lazyimage.oci import Platform
from lazyimage.registry import Keychain, RegistryClient, RegistryHosts

__all__ = ["run_convert", "run_copy", "run_inspect"]


async def _open_store(
    stack: AsyncExitStack, text: str, args: argparse.Namespace, *, create: bool = False
) -> ImageStore:
    """The image at ``text``: an OCI layout, or a registry reached as the registry options
    say (a hosts.toml that cannot be used is an error, not skipped)."""
    location = parse_location(text)
    if isinstance(location, LayoutLocation):
        return LayoutStore(location, create=create)
    config = args.registry_config
    client = await stack.enter_async_context(
        RegistryClient(
            keychain=Keychain.from_docker_config(),
            insecure_registries=tuple(args.insecure_registry),
            hosts=RegistryHosts(config, strict=True) if config is not None else None,
        )
    )
    return RegistryStore(client, location)


def _priorities(args: argparse.Namespace) -> list[str]:
    patterns: list[str] = list(args.prioritize or [])
    for source in args.prioritize_from or []:
        if source.startswith("lazyimage:"):
            raise InvalidReferenceError(
                f"--prioritize-from {source}: learned profiles are read from the cluster by the "
                "operator; pass a file with one path or glob per line"
            )
        try:
            with open(source, encoding="utf-8") as lines:
                patterns.extend(read_priority_list(lines))
        except OSError as exc:
            raise InvalidReferenceError(f"--prioritize-from {source}: {exc.strerror}") from exc
    return patterns


async def run_convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    options = ConvertOptions(
        build=BuildOptions(
            chunk_size=args.chunk_size, level=args.level, prioritized=_priorities(args)
        ),
        platform=Platform.parse(args.platform) if args.platform else Platform("linux", "amd64"),
        all_platforms=args.all_platforms,
    )
    progress = ConvertProgress(err)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        source = await _open_store(stack, args.src, args)
        target = await _open_store(stack, args.dst, args, create=True)
        try:
            result = await convert_image(source, target, options, progress)
        finally:
            progress.finish()
    _report_conversion(result, time.monotonic() - started, err)
    print(result.digest, file=out)


def _report_conversion(result: ConvertResult, seconds: float, err: TextIO) -> None:
    for manifest in result.manifests:
        converted = sum(1 for layer in manifest.layers if layer.converted)
        kept = len(manifest.layers) - converted
        print(
            f"{manifest.platform}: {converted} layers converted, {kept} already eStargz",
            file=err,
        )
    before, after = result.source_size, result.result_size
    change = (after / before - 1) * 100 if before else 0.0
    print(
        f"size {format_bytes(before)} -> {format_bytes(after)} ({change:+.1f}%), {seconds:.1f} s",
        file=err,
    )


async def run_copy(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    async with AsyncExitStack() as stack:
        source = await _open_store(stack, args.src, args)
        target = await _open_store(stack, args.dst, args, create=True)
        digest = await copy_image(source, target)
    print(digest, file=out)


async def run_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    platform = Platform.parse(args.platform) if args.platform else Platform("linux", "amd64")
    async with AsyncExitStack() as stack:
        store = await _open_store(stack, args.ref, args)
        result = await inspect_image(store, platform, with_files=args.files)
    if args.json:
        json.dump(_inspection_json(result), out, indent=2)
        out.write("\n")
    else:
        _print_inspection(result, args.files, out)


def _inspection_json(result: ImageInspection) -> dict[str, Any]:
    doc = asdict(result)
    for layer, view in zip(result.layers, doc["layers"], strict=True):
        view["overhead"] = layer.overhead
        if not view["files"]:
            view.pop("files")
    return doc


def _print_inspection(result: ImageInspection, with_files: bool, out: TextIO) -> None:
    print(f"image     {result.name}", file=out)
    print(f"manifest  {result.manifest_digest}", file=out)
    print(f"platform  {result.platform}", file=out)
    header = (
        f"{'#':>2}  {'eStargz':7}  {'size':>10}  {'uncompr.':>10}  {'files':>6}  "
        f"{'prio zone':>10}  {'TOC':>9}  {'vs src':>7}  digest / TOC digest"
    )
    print(header, file=out)
    for layer in result.layers:
        kind = "yes" if layer.is_estargz else "no"
        overhead = f"{(layer.overhead - 1) * 100:+.1f}%" if layer.overhead else "-"
        print(
            f"{layer.index:>2}  {kind:7}  {format_bytes(layer.size):>10}  "
            f"{format_bytes(layer.uncompressed_size) if layer.uncompressed_size else '-':>10}  "
            f"{layer.file_count if layer.is_estargz else '-':>6}  "
            f"{format_bytes(layer.prefetch_zone) if layer.prefetch_zone else '-':>10}  "
            f"{format_bytes(layer.toc_bytes) if layer.toc_bytes else '-':>9}  "
            f"{overhead:>7}  {layer.digest}",
            file=out,
        )
        if layer.toc_digest:
            verified = "verified" if layer.toc_verified else "NOT verified"
            print(f"{'':>69}TOC {layer.toc_digest} ({verified})", file=out)
        if layer.reason:
            print(f"{'':>69}{layer.reason}", file=out)
        if with_files:
            for info in layer.files:
                link = f" -> {info.link}" if info.link else ""
                print(
                    f"      {info.type:8} {info.mode:04o} {info.uid:>5}:{info.gid:<5} "
                    f"{info.size:>12}  {info.path}{link}",
                    file=out,
                )
