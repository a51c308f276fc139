"""``python -m tests.images {build,list,path,gc}``: manage the cached test images.

Run from the repository root, as root (debootstrap, chroot, device nodes)::

    .venv/bin/python -m tests.images build            # every test image that is missing
    .venv/bin/python -m tests.images build python     # one image (and what it derives from)
    .venv/bin/python -m tests.images list             # what is cached, with layer sizes
    .venv/bin/python -m tests.images path busybox     # the OCI layout of a built image
    .venv/bin/python -m tests.images gc               # delete images of older recipes
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.images import _proc
from tests.images.builder import (
    BuildError,
    build,
    find_image,
    human_size,
    images_root,
    recipe_key,
)
from tests.images.recipes import RECIPES, TEST_IMAGES


def _say(message: str) -> None:
    print(message, flush=True)


def _sizes(info: dict[str, Any]) -> str:
    layers = info["layers"]
    gz = sum(layer["size"] for layer in layers)
    tar = sum(layer["uncompressed_size"] for layer in layers)
    return f"{len(layers)} layers, {human_size(gz)} gzip, {human_size(tar)} tar"


def _cmd_build(names: list[str], force: bool) -> int:
    if os.geteuid() != 0:
        _say("building test images needs root (debootstrap, device nodes, file owners)")
        return 2
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        _say(f"no test image {', '.join(unknown)}; known: {', '.join(RECIPES)}")
        return 2
    start = time.monotonic()
    for name in names or list(TEST_IMAGES):
        path = build(name, force=force, log=_say)
        info = json.loads((path / "info.json").read_text())
        _say(f"{name}: {_sizes(info)} at {path / 'oci'}")
    _say(f"all done in {time.monotonic() - start:.1f}s")
    return 0


def _cmd_list() -> int:
    for name in RECIPES:
        path = find_image(name)
        if path is None:
            _say(f"{name:10} {recipe_key(name)}  not built")
            continue
        info = json.loads((path / "info.json").read_text())
        _say(f"{name:10} {info['key']}  {_sizes(info)}  {path / 'oci'}")
        for i, layer in enumerate(info["layers"]):
            _say(
                f"{'':12}layer {i}: {human_size(layer['size']):>10} gzip"
                f" {human_size(layer['uncompressed_size']):>10} tar  {layer['entries']:6} entries"
                f"  {layer['digest']}"
            )
    return 0


def _cmd_path(name: str) -> int:
    if name not in RECIPES:
        _say(f"no test image {name!r}; known: {', '.join(RECIPES)}")
        return 2
    path = find_image(name)
    if path is None:
        _say(f"{name} is not built; run: python -m tests.images build {name}")
        return 1
    print(path / "oci")
    return 0


def _unlocked(lock: Path) -> bool:
    if not lock.exists():
        return True
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _cmd_gc() -> int:
    current = {f"{name}-{recipe_key(name)}" for name in RECIPES}
    root = images_root()
    for entry in sorted(root.iterdir()):
        if entry.name == ".locks":
            continue
        if entry.name.startswith(".tmp-"):
            stem = entry.name[len(".tmp-") :].rpartition("-")[0]
            if not _unlocked(root / ".locks" / f"{stem}.lock"):
                _say(f"keeping {entry}: a build is running")
                continue
        elif entry.name in current:
            continue
        _say(f"removing {entry}")
        _proc.remove_tree(entry)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.images", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build missing images into the cache")
    p_build.add_argument("names", nargs="*", metavar="NAME", help=", ".join(RECIPES))
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("list", help="show the cached images and their layers")
    p_path = sub.add_parser("path", help="print the OCI layout directory of a built image")
    p_path.add_argument("name")
    sub.add_parser("gc", help="delete images built from older recipes and abandoned builds")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return _cmd_build(list(args.names), args.force)
        if args.command == "list":
            return _cmd_list()
        if args.command == "path":
            return _cmd_path(args.name)
        return _cmd_gc()
    except (BuildError, _proc.CommandError) as exc:
        _say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
