"""The command line's small parts: sizes, levels, exit codes and the progress bar."""

from __future__ import annotations

import argparse
import io

import pytest
from lazyimage import errors, exitcodes
from lazyimage.cli import _size, build_parser
from lazyimage.cli._progress import ConvertProgress, format_bytes

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4M", 4 << 20),
        ("512k", 512 << 10),
        ("1048576", 1 << 20),
        ("2MiB", 2 << 20),
        ("1g", 1 << 30),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert _size(text) == value


@pytest.mark.parametrize("text", ["", "-3", "0", "4X", "M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _size(text)


def test_convert_flags_parse_as_the_design_says() -> None:
    args = build_parser().parse_args(
        [
            "convert",
            "a",
            "oci:/tmp/x:v1",
            "--prioritize",
            "usr/bin/*",
            "--prioritize",
            "etc/x",
            "--prioritize-from",
            "list.txt",
            "--chunk-size",
            "1M",
            "--level",
            "6",
            "--platform",
            "linux/arm64",
            "--insecure-registry",
            "h:1",
            "--insecure-registry",
            "h:2",
        ]
    )
    assert args.prioritize == ["usr/bin/*", "etc/x"]
    assert args.prioritize_from == ["list.txt"]
    assert (args.chunk_size, args.level, args.platform) == (1 << 20, 6, "linux/arm64")
    assert args.insecure_registry == ["h:1", "h:2"]


def test_platform_and_all_platforms_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "a", "b", "--platform", "p/q", "--all-platforms"])


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFoundError("x"), exitcodes.NOT_FOUND),
        (errors.AuthError("x"), exitcodes.AUTH),
        (errors.UnavailableError("x"), exitcodes.UNAVAILABLE),
        (errors.FormatError("x"), exitcodes.BAD_DATA),
        (errors.VerificationError("x"), exitcodes.BAD_DATA),
        (errors.InvalidReferenceError("x"), exitcodes.USAGE),
        (errors.ConversionError("x"), exitcodes.FAILED),
        (errors.PlainHTTPError("x"), exitcodes.USAGE),
        (errors.StorageError("x"), exitcodes.FAILED),
        (OSError(28, "No space left on device"), exitcodes.FAILED),
        (ExceptionGroup("one", [OSError(98, "Address already in use")]), exitcodes.FAILED),
        (ExceptionGroup("two", [OSError(98, "x"), RuntimeError("y")]), exitcodes.INTERNAL),
        (RuntimeError("bug"), exitcodes.INTERNAL),
    ],
)
def test_exit_codes(error: BaseException, code: int) -> None:
    assert exitcodes.exit_code_for(error) == code


def test_exit_code_looks_through_a_conversion_error() -> None:
    wrapped = errors.ConversionError("layer failed", image="i", layer="l")
    wrapped.__cause__ = errors.AuthError("denied")
    assert exitcodes.exit_code_for(wrapped) == exitcodes.AUTH
    assert str(wrapped).startswith("image i, layer l: ")


def test_error_messages_of_system_errors_name_the_path() -> None:
    full = OSError(28, "No space left on device", "/out/blobs/sha256/x")
    assert exitcodes.error_message(full) == "/out/blobs/sha256/x: No space left on device"
    copy = OSError(13, "Permission denied", "/a", None, "/b")
    assert exitcodes.error_message(copy) == "/a -> /b: Permission denied"
    grouped = ExceptionGroup("g", [OSError(98, "Address already in use")])
    assert exitcodes.error_message(grouped) == "Address already in use"
    assert exitcodes.error_message(errors.NotFoundError("gone")) == "gone"


def test_progress_draws_on_a_terminal_only() -> None:
    shown = io.StringIO()
    bar = ConvertProgress(shown, enabled=True)
    bar.add_work(1000)
    bar.advance(500)
    bar.finish()
    assert "\r[" in shown.getvalue() and "50.0%" in shown.getvalue()

    quiet = io.StringIO()  # not a tty: enabled follows isatty()
    bar = ConvertProgress(quiet)
    bar.add_work(1000)
    bar.advance(1000)
    bar.finish()
    assert quiet.getvalue() == ""


def test_format_bytes() -> None:
    assert format_bytes(999) == "999 B"
    assert format_bytes(1500) == "1.5 KB"
    assert format_bytes(52_000_000) == "52.0 MB"
