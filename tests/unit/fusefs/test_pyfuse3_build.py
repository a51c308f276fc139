"""The installed pyfuse3 is lazyimage's patched build, and the repository's pieces agree on it:
the pin in pyproject.toml, the patch (nodeagent/patches/) and the level the code requires."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pyfuse3
import pytest
from lazyimage.errors import LazyImageError
from lazyimage.fusefs._pyfuse3_build import PATCH_LEVEL, require_patched_pyfuse3

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[3]


def _pinned_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("pyfuse3")]
    match = re.fullmatch(r"pyfuse3==(\S+)", pin)
    assert match, f"pyfuse3 must be pinned to the patched build, not {pin!r}"
    return match.group(1)


def _patch() -> tuple[Path, str]:
    (path,) = (REPO / "nodeagent/patches").glob("pyfuse3-*-lazyimage.patch")
    return path, path.read_text()


def test_the_installed_pyfuse3_is_the_pinned_patched_build() -> None:
    assert importlib.metadata.version("pyfuse3") == _pinned_version()
    assert pyfuse3.__version__ == _pinned_version()
    assert getattr(pyfuse3, "LAZYIMAGE_PATCH", None) == PATCH_LEVEL
    require_patched_pyfuse3()


def test_the_patch_makes_the_pinned_version_and_level() -> None:
    version = _pinned_version()
    upstream, _, label = version.partition("+")
    assert label.startswith("lazyimage."), version
    path, text = _patch()
    assert path.name == f"pyfuse3-{upstream}-lazyimage.patch"
    assert f"\n+Version: {version}\n" in text
    assert f"\n+LAZYIMAGE_PATCH = {PATCH_LEVEL}\n" in text
    build = (REPO / "scripts/build-pyfuse3").read_text()
    assert f"\nVERSION={upstream}\n" in build


def test_an_unpatched_pyfuse3_is_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(pyfuse3, "LAZYIMAGE_PATCH")
    with pytest.raises(LazyImageError, match=r"has no lazyimage patch.*scripts/setup"):
        require_patched_pyfuse3()
    monkeypatch.setattr(pyfuse3, "LAZYIMAGE_PATCH", PATCH_LEVEL + 1, raising=False)
    with pytest.raises(LazyImageError, match=rf"has level {PATCH_LEVEL + 1} of the"):
        require_patched_pyfuse3()


def test_process_init_needs_a_session() -> None:
    # No session in this process: nothing is handed to libfuse.
    with pytest.raises(RuntimeError, match="init"):
        pyfuse3.process_init(bytes(40))
