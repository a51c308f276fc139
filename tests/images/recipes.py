"""What each test image contains. A change here changes the image's cache key.

Three images:

``python``
    ``debootstrap --variant=minbase`` of Debian bookworm plus ``python3-minimal`` (the
    ``python3`` command) and ``libpython3.11-stdlib`` (``json`` and ``asyncio`` are not in
    the minimal interpreter package; ``email`` is), with the whole standard library
    byte-compiled, and without apt lists, logs, manuals and translations. Split into a base
    layer, a python layer and a small synthetic top layer that exercises OCI layer
    semantics (see ``TopLayer``).
``python-v2``
    ``python`` with one stdlib module changed in the python layer; the other layers are the
    same gzip blobs.
``busybox``
    ``/bin/busybox`` from the ``busybox-static`` package, a symlink per applet, and a
    minimal ``/etc``.

``python-base``
    the base the repository's ``Dockerfile`` is built on in the tests, in place of the
    public ``python:3.11-slim-bookworm`` this machine cannot pull: Debian bookworm minbase
    with python3.11, its standard library, ``venv`` with ``ensurepip``, and the CA
    certificates, in one layer. apt stays usable (``apt-get update`` first, as in a slim
    image).

One more, for the cold-start benchmark only (``TEST_IMAGES`` leaves it out, so the test
command never builds it):

``numpy``
    the ``python`` base plus ``python3-numpy``, and a large second layer: the interpreter,
    numpy and 1 GiB of incompressible data files the workload never reads, as a model or
    dataset image carries.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BUSYBOX",
    "NUMPY",
    "NUMPY_PROBE_CODE",
    "NUMPY_PROBE_OUTPUT",
    "PYTHON",
    "PYTHON_BASE",
    "PYTHON_PROBE_CODE",
    "PYTHON_PROBE_OUTPUT",
    "PYTHON_TOP",
    "PYTHON_V2",
    "RECIPES",
    "TEST_IMAGES",
    "BusyboxRecipe",
    "DebootstrapRecipe",
    "LayerSplit",
    "Recipe",
    "TopLayer",
    "VariantRecipe",
]

MiB = 1 << 20

STANDARD_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run as `python3 -c PYTHON_PROBE_CODE`; it prints exactly PYTHON_PROBE_OUTPUT.
PYTHON_PROBE_CODE = """\
import asyncio, email.message, json
msg = email.message.EmailMessage()
msg["Subject"] = "lazyimage"
async def main():
    await asyncio.sleep(0)
    return json.dumps({"subject": msg["Subject"], "ok": True})
print(asyncio.run(main()))
"""
PYTHON_PROBE_OUTPUT = '{"subject": "lazyimage", "ok": true}'

# Run as `python3 -c NUMPY_PROBE_CODE` in the numpy image.
NUMPY_PROBE_CODE = "import numpy; print(int(numpy.arange(1000).sum()), numpy.__version__ > '1')"
NUMPY_PROBE_OUTPUT = "499500 True"


@dataclass(frozen=True)
class LayerSplit:
    """A layer cut out of a rootfs by path.

    A path belongs to the first split whose ``patterns`` (``fnmatch``, matched against the
    path relative to the rootfs, e.g. ``usr/bin/python3*``) match the path or one of its
    parent directories. Paths no split claims form the image's first layer.
    """

    name: str
    patterns: tuple[str, ...]
    comment: str


@dataclass(frozen=True)
class TopLayer:
    """The python image's last layer: one of each thing an OCI layer applier must get right."""

    whiteout_file: str  # a file from the base layer, deleted with .wh.NAME
    whiteout_dir: str  # a directory from the base layer, deleted with .wh.NAME
    opaque_dir: str  # a base-layer directory whose lower contents .wh..wh..opq hides
    opaque_files: tuple[tuple[str, str], ...]  # (name, text): what the opaque dir holds instead
    replaced_file: str  # a base-layer file given new content
    replaced_text: str
    xattr_file: str
    xattr_name: str
    xattr_value: str
    hardlinks: tuple[str, str]  # two names of one file
    hardlink_text: str
    symlink: str  # relative symlink to hardlinks[0]
    symlink_target: str
    abs_symlink: str  # absolute symlink into the python layer
    abs_symlink_target: str
    owned_file: str  # non-root owner, unusual mode
    owned_uid: int
    owned_gid: int
    owned_mode: int
    app_file: str  # the probe as a script
    big_file: str  # more than one 4 MiB chunk of incompressible bytes
    big_size: int
    big_seed: int

    def big_file_bytes(self) -> bytes:
        return random.Random(self.big_seed).randbytes(self.big_size)

    def app_text(self) -> str:
        return "#!/usr/bin/python3\n" + PYTHON_PROBE_CODE


@dataclass(frozen=True)
class DebootstrapRecipe:
    name: str
    revision: int  # bump to force a rebuild with the same inputs
    suite: str
    arch: str
    variant: str
    include: tuple[str, ...]
    chroot_commands: tuple[tuple[str, ...], ...]  # run in the new rootfs after debootstrap
    prune: tuple[str, ...]  # globs removed from the rootfs; a trailing "/" matches only dirs
    base_comment: str
    splits: tuple[LayerSplit, ...]
    top: TopLayer | None
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    kind: str = "debootstrap"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BusyboxRecipe:
    name: str
    revision: int
    package: str
    etc_files: tuple[tuple[str, str, int], ...]  # (path, text, mode)
    dirs: tuple[tuple[str, int], ...]  # (path, mode): empty dirs a container expects
    base_comment: str
    splits: tuple[LayerSplit, ...]
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    kind: str = "busybox"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VariantRecipe:
    """``base`` with one file of one layer changed: ``append_text`` added to ``path``."""

    name: str
    revision: int
    base: str
    path: str
    append_text: str
    kind: str = "variant"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Recipe = DebootstrapRecipe | BusyboxRecipe | VariantRecipe


PYTHON_TOP = TopLayer(
    whiteout_file="usr/share/doc/base-files/README.FHS",
    whiteout_dir="usr/share/doc/debian-archive-keyring",
    opaque_dir="etc/skel",
    opaque_files=((".profile", "# lazyimage: replaces the lower /etc/skel contents\n"),),
    replaced_file="etc/motd",
    replaced_text="lazyimage python test image\n",
    xattr_file="opt/lazyimage/xattr.txt",
    xattr_name="user.lazyimage",
    xattr_value="fixture-xattr-value",
    hardlinks=("opt/lazyimage/hardlink-a", "opt/lazyimage/hardlink-b"),
    hardlink_text="one inode, two names\n",
    symlink="opt/lazyimage/symlink",
    symlink_target="hardlink-a",
    abs_symlink="usr/local/bin/python",
    abs_symlink_target="/usr/bin/python3",
    owned_file="opt/lazyimage/owned.txt",
    owned_uid=1000,
    owned_gid=1000,
    owned_mode=0o640,
    app_file="opt/lazyimage/app.py",
    big_file="opt/lazyimage/random.bin",
    big_size=4 * MiB + 12345,
    big_seed=20260101,
)

_PRUNE = (
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_*",
    "var/log/*.log",
    "var/log/apt/*",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    # Written from the build host; a runtime provides its own.
    "etc/hostname",
    "etc/resolv.conf",
    # As Debian's slim images: no manuals, info pages or translations.
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*/",
)

_PYTHON_PATHS = (
    "usr/lib/python3*",
    "usr/local/lib/python3*",
    "usr/bin/python3*",
    "usr/bin/py3*",
    "usr/share/python3",
    "usr/share/binfmts/python3*",
    "usr/lib/binfmt.d/python3*",
    "usr/share/doc/*python3*",
    "usr/share/lintian/overrides/*python3*",
    "etc/python3*",
    "var/lib/dpkg/info/*python3*",
)

PYTHON = DebootstrapRecipe(
    name="python",
    revision=1,
    suite="bookworm",
    arch="amd64",
    variant="minbase",
    include=("python3-minimal", "libpython3.11-stdlib"),
    # Only libpython3.11-minimal byte-compiles its modules when installed; compile the rest
    # of the standard library (json, asyncio, ...) too, as a python image ships it. The
    # .pyc files are timestamp-based, like Debian's own, and come out the same every time.
    chroot_commands=(("/usr/bin/python3", "-m", "compileall", "-q", "/usr/lib/python3.11"),),
    prune=_PRUNE,
    base_comment="Debian bookworm minbase without python",
    splits=(
        LayerSplit(
            name="python",
            patterns=_PYTHON_PATHS,
            comment="python3.11 interpreter and standard library",
        ),
    ),
    top=PYTHON_TOP,
    env=(STANDARD_PATH, "LANG=C.UTF-8"),
    cmd=("python3",),
)

PYTHON_V2 = VariantRecipe(
    name="python-v2",
    revision=1,
    base="python",
    path="usr/lib/python3.11/colorsys.py",
    append_text='\nLAZYIMAGE_VARIANT = "v2"\n',
)

PYTHON_BASE = DebootstrapRecipe(
    name="python-base",
    revision=1,
    suite="bookworm",
    arch="amd64",
    variant="minbase",
    include=("python3-minimal", "libpython3.11-stdlib", "python3-venv", "ca-certificates"),
    chroot_commands=(("/usr/bin/python3", "-m", "compileall", "-q", "/usr/lib/python3.11"),),
    prune=_PRUNE,
    base_comment="Debian bookworm minbase with python3.11, venv and CA certificates",
    splits=(),
    top=None,
    env=(STANDARD_PATH, "LANG=C.UTF-8"),
    cmd=("python3",),
)

BUSYBOX = BusyboxRecipe(
    name="busybox",
    revision=1,
    package="busybox-static",
    etc_files=(
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644),
    ),
    dirs=(("tmp", 0o1777), ("root", 0o700), ("home", 0o755), ("proc", 0o555), ("sys", 0o555)),
    base_comment="busybox-static: /bin/busybox and one symlink per applet",
    splits=(
        LayerSplit(
            name="config",
            patterns=("etc", "tmp", "root", "home", "proc", "sys"),
            comment="/etc/passwd, /etc/group and empty system directories",
        ),
    ),
    env=(STANDARD_PATH,),
    cmd=("sh",),
)

# Incompressible, and the same bytes every build: 8 files of 128 MiB from a seeded generator.
_WRITE_DATASET = (
    "import os, random\n"
    "os.makedirs('/opt/dataset', exist_ok=True)\n"
    "r = random.Random(20261128)\n"
    "for shard in range(8):\n"
    "    with open(f'/opt/dataset/shard-{shard:02}.bin', 'wb') as f:\n"
    "        for _ in range(8):\n"
    "            f.write(r.randbytes(16 << 20))\n"
)

NUMPY = DebootstrapRecipe(
    name="numpy",
    revision=1,
    suite="bookworm",
    arch="amd64",
    variant="minbase",
    include=("python3-minimal", "libpython3.11-stdlib", "python3-numpy"),
    chroot_commands=(
        ("/usr/bin/python3", "-m", "compileall", "-q", "/usr/lib/python3.11"),
        ("/usr/bin/python3", "-c", _WRITE_DATASET),
    ),
    prune=_PRUNE,
    base_comment="Debian bookworm minbase with numpy's native libraries, without python",
    splits=(
        LayerSplit(
            name="python-numpy-data",
            patterns=(*_PYTHON_PATHS, "opt/dataset"),
            comment="python3.11, numpy and 1 GiB of data files",
        ),
    ),
    top=None,
    env=(STANDARD_PATH, "LANG=C.UTF-8"),
    cmd=("python3",),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PYTHON, PYTHON_V2, BUSYBOX, PYTHON_BASE, NUMPY)}
# What the tests use, and what `python -m tests.images build` builds by default.
TEST_IMAGES = ("python", "python-v2", "busybox", "python-base")
