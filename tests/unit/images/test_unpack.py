"""unpack_layers against small synthetic layers; tree_manifest and diff_trees."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.fixtures.unpack import (
    ESTARGZ_METADATA,
    UnsafeLayerError,
    diff_trees,
    tree_manifest,
    unpack_layers,
)

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and trusted.* need root")

T0 = 1_700_000_000


@dataclass
class E:
    """One tar entry to write."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    linkname: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)


def d(name: str, **kw: Any) -> E:
    kw.setdefault("mode", 0o755)
    return E(name, tarfile.DIRTYPE, **kw)


def f(name: str, data: bytes = b"", **kw: Any) -> E:
    return E(name, tarfile.REGTYPE, data=data, **kw)


def sym(name: str, target: str) -> E:
    return E(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.dev
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if info.size else None)
    return buf.getvalue()


class Layers:
    """Writes numbered layer blobs into a directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.count = 0

    def __call__(self, entries: list[E], compression: str = "gzip") -> Path:
        raw = tar_bytes(entries)
        if compression == "gzip":
            data = gzip.compress(raw, mtime=0)
        elif compression == "zstd":
            data = zstandard.ZstdCompressor().compress(raw)
        else:
            data = raw
        self.count += 1
        path = self.dir / f"layer-{self.count}.{compression}"
        path.write_bytes(data)
        return path


@pytest.fixture
def layer(tmp_path: Path) -> Layers:
    return Layers(tmp_path / "blobs")


def names_under(root: Path) -> set[str]:
    return set(tree_manifest(root))


def test_regular_files_dirs_and_symlinks_with_metadata(layer: Layers, tmp_path: Path) -> None:
    blob = layer(
        [
            d("app", mode=0o750, mtime=T0 + 5),
            f("app/run.sh", b"#!/bin/sh\necho hi\n", mode=0o4755, mtime=T0 + 7),
            f("app/empty"),
            sym("app/current", "run.sh"),
            sym("app/abs", "/etc/passwd"),
            E("app/fifo", tarfile.FIFOTYPE, mode=0o600),
            f("app/x.txt", b"x", xattrs={"user.note": "hello"}),
        ]
    )
    root = unpack_layers([blob], tmp_path / "root")
    tree = tree_manifest(root, mtimes=True)
    assert tree["app"].type == "dir"
    assert tree["app"].mode == 0o750
    # A directory's mtime is set after its entries were written into it.
    assert tree["app"].mtime == T0 + 5
    assert tree["app/run.sh"].mode == 0o4755
    assert tree["app/run.sh"].mtime == T0 + 7
    assert tree["app/run.sh"].size == 18
    assert (root / "app/run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert tree["app/empty"].size == 0
    assert tree["app/current"].type == "symlink"
    assert tree["app/current"].link_target == "run.sh"
    assert tree["app/abs"].link_target == "/etc/passwd"
    assert tree["app/fifo"].type == "fifo"
    assert tree["app/x.txt"].xattrs == {"user.note": b"hello"}


@needs_root
def test_owners_devices_and_trusted_xattrs(layer: Layers, tmp_path: Path) -> None:
    blob = layer(
        [
            d("dev"),
            E("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
            E("dev/loop9", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 9)),
            f("home.txt", b"mine", uid=1000, gid=1001, mode=0o640),
            d("opaque-looking", xattrs={"trusted.overlay.opaque": "y"}),
            sym("link-owned", "home.txt"),
        ]
    )
    root = unpack_layers([blob], tmp_path / "root")
    tree = tree_manifest(root)
    assert tree["dev/null"].type == "char"
    assert tree["dev/null"].device == (1, 3)
    assert tree["dev/null"].mode == 0o666
    assert tree["dev/loop9"].type == "block"
    assert tree["dev/loop9"].device == (7, 9)
    assert (tree["dev/loop9"].uid, tree["dev/loop9"].gid) == (0, 6)
    assert (tree["home.txt"].uid, tree["home.txt"].gid, tree["home.txt"].mode) == (
        1000,
        1001,
        0o640,
    )
    assert tree["opaque-looking"].xattrs == {"trusted.overlay.opaque": b"y"}
    with open(root / "dev/null", "rb") as null:
        assert null.read() == b""


def test_whiteouts_delete_lower_files_and_directories(layer: Layers, tmp_path: Path) -> None:
    lower = layer(
        [
            d("a"),
            d("a/b"),
            f("a/b/gone", b"1"),
            f("a/b/kept", b"2"),
            d("tree"),
            d("tree/sub"),
            f("tree/sub/deep", b"3"),
            sym("a/link", "b"),
        ]
    )
    upper = layer(
        [
            f("a/b/.wh.gone"),
            f("a/.wh.tree-not-here"),  # whiting out a missing name is fine
            f(".wh.tree"),
            f("a/.wh.link"),
            f("nowhere/.wh.x"),  # nor is a whiteout below a missing directory
        ]
    )
    root = unpack_layers([lower, upper], tmp_path / "root")
    assert names_under(root) == {"a", "a/b", "a/b/kept"}


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_opaque_directory_hides_only_lower_contents(
    layer: Layers, tmp_path: Path, marker_first: bool
) -> None:
    lower = layer(
        [
            d("etc"),
            d("etc/skel"),
            f("etc/skel/.bashrc", b"lower"),
            d("etc/skel/sub"),
            f("etc/skel/sub/old", b"lower"),
            f("etc/other", b"untouched"),
        ]
    )
    marker = f("etc/skel/.wh..wh..opq")
    new = [f("etc/skel/.profile", b"upper"), f("etc/skel/sub/new", b"upper")]
    upper = layer([marker, *new] if marker_first else [*new, marker])
    root = unpack_layers([lower, upper], tmp_path / "root")
    assert names_under(root) == {
        "etc",
        "etc/other",
        "etc/skel",
        "etc/skel/.profile",
        "etc/skel/sub",  # recreated implicitly by this layer, so it stays
        "etc/skel/sub/new",
    }
    assert (root / "etc/skel/.profile").read_bytes() == b"upper"
    # An opaque directory in the lowest layer hides nothing and is not itself a file.
    root2 = unpack_layers([upper], tmp_path / "root2")
    assert not (root2 / "etc/skel/.wh..wh..opq").exists()


def test_later_layers_replace_types(layer: Layers, tmp_path: Path) -> None:
    lower = layer([d("p"), f("p/child", b"c"), f("q", b"file"), d("r"), sym("s", "q")])
    upper = layer(
        [
            f("p", b"now a file"),
            d("q", mode=0o700),
            f("q/inside", b"i"),
            d("r", mode=0o711, mtime=T0 + 9),  # a dir over a dir: metadata only
            f("s", b"no longer a link"),
        ]
    )
    root = unpack_layers([lower, upper], tmp_path / "root")
    tree = tree_manifest(root, mtimes=True)
    assert tree["p"].type == "file"
    assert "p/child" not in tree
    assert tree["q"].type == "dir"
    assert tree["q"].mode == 0o700
    assert tree["q/inside"].size == 1
    assert (tree["r"].mode, tree["r"].mtime) == (0o711, T0 + 9)
    assert tree["s"].type == "file"
    assert (root / "q").is_dir() and not (root / "q").is_symlink()


def test_hardlinks_within_and_across_layers(layer: Layers, tmp_path: Path) -> None:
    lower = layer([d("bin"), f("bin/gzip", b"binary", mode=0o755), hard("bin/gunzip", "bin/gzip")])
    upper = layer([d("usr"), hard("usr/zcat", "bin/gzip")])
    root = unpack_layers([lower, upper], tmp_path / "root")
    tree = tree_manifest(root)
    inodes = {os.lstat(root / p).st_ino for p in ("bin/gzip", "bin/gunzip", "usr/zcat")}
    assert len(inodes) == 1
    assert os.lstat(root / "bin/gzip").st_nlink == 3
    for p in ("bin/gzip", "bin/gunzip", "usr/zcat"):
        assert tree[p].hardlink_group == "bin/gunzip"  # the first of the names, sorted
        assert tree[p].mode == 0o755
    # Replacing one name leaves the others alone.
    third = layer([f("bin/gunzip", b"script")])
    root2 = unpack_layers([lower, upper, third], tmp_path / "root2")
    tree2 = tree_manifest(root2)
    assert tree2["bin/gunzip"].hardlink_group == ""
    assert tree2["bin/gzip"].hardlink_group == "bin/gzip"
    assert (root2 / "usr/zcat").read_bytes() == b"binary"


def test_gzip_zstd_and_plain_layers_unpack_alike(layer: Layers, tmp_path: Path) -> None:
    entries = [
        d("data", mtime=T0 + 1),
        f("data/a", os.urandom(70_000), mtime=T0 + 2),
        sym("data/b", "a"),
        hard("data/c", "data/a"),
    ]
    trees = []
    for compression in ("gzip", "zstd", "plain"):
        blob = layer(entries, compression)
        trees.append(tree_manifest(unpack_layers([blob], tmp_path / compression), mtimes=True))
    assert trees[0] == trees[1] == trees[2]
    assert trees[0]["data/a"].size == 70_000


@pytest.mark.parametrize(
    "entry",
    [
        f("../escape", b"x"),
        f("/etc/escape", b"x"),
        f("ok/../../escape", b"x"),
        hard("evil-link", "../outside/file"),
        hard("evil-link", "/etc/passwd"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "hardlink-dotdot", "hardlink-absolute"],
)
def test_rejects_names_that_leave_the_root(layer: Layers, tmp_path: Path, entry: E) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"keep")
    blob = layer([d("ok"), entry])
    with pytest.raises(UnsafeLayerError):
        unpack_layers([blob], tmp_path / "root")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs", "outside", "root"]
    assert [p.name for p in outside.iterdir()] == ["file"]


def test_symlinked_parents_resolve_inside_the_root(layer: Layers, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = layer(
        [
            sym("abs", str(outside)),
            sym("rel", "../../../../../.."),
            sym("usrbin", "usr/bin"),
            d("usr"),
            d("usr/bin"),
        ]
    )
    upper = layer([f("abs/planted", b"1"), f("rel/planted2", b"2"), f("usrbin/tool", b"3")])
    root = unpack_layers([lower, upper], tmp_path / "root")
    assert list(outside.iterdir()) == []
    # As if root were "/": the absolute target is taken relative to the root ...
    assert (root / str(outside).lstrip("/") / "planted").read_bytes() == b"1"
    # ... and ".." stops at the root.
    assert (root / "planted2").read_bytes() == b"2"
    # The merged-/usr case: bin -> usr/bin.
    assert (root / "usr/bin/tool").read_bytes() == b"3"
    assert (root / "usrbin").is_symlink()


def test_symlink_loops_are_rejected(layer: Layers, tmp_path: Path) -> None:
    blob = layer([sym("loop", "loop"), f("loop/x", b"x")])
    with pytest.raises(UnsafeLayerError, match="symlinks"):
        unpack_layers([blob], tmp_path / "root")


def test_estargz_metadata_is_skipped_by_default(layer: Layers, tmp_path: Path) -> None:
    entries = [f(name, b"\x0f") for name in sorted(ESTARGZ_METADATA)] + [f("app", b"a")]
    blob = layer(entries)
    assert names_under(unpack_layers([blob], tmp_path / "default")) == {"app"}
    assert names_under(unpack_layers([blob], tmp_path / "all", skip=())) == {
        "app",
        *ESTARGZ_METADATA,
    }


def test_tree_manifest_equality_and_readable_diff(layer: Layers, tmp_path: Path) -> None:
    base = [d("etc"), f("etc/conf", b"v1", mode=0o644), sym("etc/link", "conf")]
    a = unpack_layers([layer(base)], tmp_path / "a")
    b = unpack_layers([layer(base)], tmp_path / "b")
    assert tree_manifest(a) == tree_manifest(b)
    assert diff_trees(tree_manifest(a), tree_manifest(b)) == []

    (b / "etc/conf").write_bytes(b"v2!")
    os.chmod(b / "etc/conf", 0o600)
    (b / "etc/link").unlink()
    (b / "etc/link").symlink_to("elsewhere")
    (b / "etc/new").write_bytes(b"")
    (a / "etc/only-a").mkdir()
    lines = diff_trees(tree_manifest(a), tree_manifest(b), names=("left", "right"))
    assert len(lines) == 4
    conf = next(line for line in lines if "etc/conf" in line)
    assert conf.startswith("differs: etc/conf: ")
    assert "mode 0o644 -> 0o600" in conf
    assert "size 2 -> 3" in conf
    assert "sha256" in conf
    assert any(
        line.startswith("differs: etc/link") and "'conf' -> 'elsewhere'" in line for line in lines
    )
    assert "only in right: etc/new (file)" in lines
    assert "only in left: etc/only-a (dir)" in lines


def test_tree_manifest_types_and_permissions(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "f").write_bytes(b"abc")
    os.chmod(root / "f", 0o2751)
    os.mkfifo(root / "p")
    os.link(root / "f", root / "g")
    tree = tree_manifest(root)
    assert set(tree) == {"f", "g", "p"}
    assert tree["f"].sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert tree["f"].mode == stat.S_IMODE(0o2751)
    assert tree["f"].hardlink_group == tree["g"].hardlink_group == "f"
    assert tree["p"].type == "fifo"
    assert tree["f"].mtime is None
