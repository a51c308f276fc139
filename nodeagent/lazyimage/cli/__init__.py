"""The ``lazyimage`` command: convert images to eStargz, inspect and copy them.

Exit codes (lazyimage.exitcodes): 0 success, 1 internal error, 2 usage, 3 not found,
4 authentication, 5 registry unavailable, 6 corrupt or invalid image data, 7 other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import anyio

from lazyimage import __version__, envflags, exitcodes, names
from lazyimage.cli._commands import run_convert, run_copy, run_inspect
from lazyimage.registry import RegistryHosts

__all__ = ["build_parser", "main"]

_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G (binary) suffix: 4M, 512k, 1048576."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = _SIZE_SUFFIXES.get(value[-1:], 1)
    digits = value[:-1] if value[-1:] in _SIZE_SUFFIXES else value
    if not digits.isdigit() or int(digits) * factor <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    return int(digits) * factor


def _level(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"compression level {text!r} is not in 0..9")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyimage",
        description="Convert container images to eStargz for lazy pulling, and inspect them.",
        epilog=(
            "Images are registry references (HOST[:PORT]/REPO[:TAG|@DIGEST]) or OCI layout "
            "directories (oci:DIR[:TAG]). Credentials come from $DOCKER_CONFIG/config.json or "
            "~/.docker/config.json; mirrors, CAs and client certificates from containerd's "
            "hosts.toml files (--registry-config). Exit codes: 0 ok, 1 internal error, 2 usage "
            "(a bad hosts.toml, an untrusted registry certificate too), 3 not found, "
            "4 authentication, 5 registry unavailable, 6 corrupt or invalid data, 7 other. "
            "LAZYIMAGE_DEBUG=1 prints tracebacks."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lazyimage {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert an image's layers to eStargz")
    convert.add_argument("src", metavar="SRC", help="the image to convert")
    convert.add_argument("dst", metavar="DST", help="where to store the converted image")
    convert.add_argument(
        "--prioritize",
        action="append",
        metavar="FILE|GLOB",
        help="a file the workload reads first (repeatable; order is kept; globs: * ? [] **)",
    )
    convert.add_argument(
        "--prioritize-from",
        action="append",
        metavar="LIST",
        help="a file with one path or glob per line, as for --prioritize",
    )
    convert.add_argument(
        "--chunk-size",
        type=_size,
        default=names.DEFAULT_CHUNK_SIZE,
        metavar="N",
        help="split files larger than N bytes into verifiable chunks (default 4M)",
    )
    convert.add_argument(
        "--level", type=_level, default=9, metavar="N", help="gzip level 0-9 (default 9)"
    )
    platforms = convert.add_mutually_exclusive_group()
    platforms.add_argument("--platform", metavar="P", help="os/arch[/variant] (linux/amd64)")
    platforms.add_argument(
        "--all-platforms", action="store_true", help="convert every platform of an index"
    )
    _add_registry_options(convert)

    copy = commands.add_parser("copy", help="copy an image unchanged (e.g. a layout to a registry)")
    copy.add_argument("src", metavar="SRC", help="the image to copy")
    copy.add_argument("dst", metavar="DST", help="where to store it")
    _add_registry_options(copy)

    inspect = commands.add_parser("inspect", help="show an image's layers and eStargz TOCs")
    inspect.add_argument("ref", metavar="REF", help="the image to inspect")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--files", action="store_true", help="list every TOC entry")
    inspect.add_argument("--platform", metavar="P", help="os/arch[/variant] for an index")
    _add_registry_options(inspect)
    return parser


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="talk plain http to this registry (repeatable)",
    )
    parser.add_argument(
        "--registry-config",
        type=envflags.directory,
        default=argparse.SUPPRESS,  # unset: LAZYIMAGE_REGISTRY_CONFIG, else containerd's
        metavar="DIR",
        help="containerd's registry configuration: mirrors, CAs and client certificates in "
        f"DIR/HOST/hosts.toml; default $LAZYIMAGE_REGISTRY_CONFIG, else "
        f"{names.DEFAULT_REGISTRY_CONFIG} if it exists; '' for none",
    )


Command = Callable[[argparse.Namespace, TextIO, TextIO], Awaitable[None]]
_COMMANDS: dict[str, Command] = {"convert": run_convert, "copy": run_copy, "inspect": run_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = envflags.EnvDefaults(os.environ)
    debug = env("LAZYIMAGE_DEBUG", envflags.boolean, False)
    if "registry_config" not in vars(args):
        default = RegistryHosts.containerd_default()
        args.registry_config = env("LAZYIMAGE_REGISTRY_CONFIG", envflags.directory, default)
    if env.problems:
        parser.error("; ".join(env.problems))
    command = _COMMANDS[args.command]
    try:
        anyio.run(command, args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("lazyimage: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: a message, never a traceback
        code = exitcodes.exit_code_for(exc)
        if code == exitcodes.INTERNAL or debug:
            traceback.print_exc()
        print(f"lazyimage {args.command}: error: {exitcodes.error_message(exc)}", file=sys.stderr)
        return code
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
