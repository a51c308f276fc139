"""LayerTree: the overlayfs view of a TOC, checked on blobs built from the layer cases."""

from __future__ import annotations

import gc
import os
import stat
import weakref
from pathlib import Path

import pytest
from lazyimage import estargz
from lazyimage.errors import FormatError
from lazyimage.estargz import TOCEntry
from lazyimage.layer import OPAQUE_XATTR, ROOT, LayerTree

from tests.layercases import CASES, Item
from tests.unit.layer.helpers import build_case, build_items, observe, toc_of, walk

pytestmark = pytest.mark.timeout(60)

MTIME_NS = 1_700_000_000 * 10**9


def _at(tree: LayerTree, path: str) -> int:
    node = ROOT
    for part in path.split("/"):
        found = tree.lookup(node, os.fsencode(part))
        assert found is not None, f"{path}: no {part!r}"
        node = found
    return node


def test_whiteout_shows_as_char_device_named_after_its_target(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "whiteouts").toc)
    etc = _at(tree, "etc")
    assert tree.lookup(etc, b".wh.passwd") is None
    assert [name for name, _ in tree.children(etc)] == [b"passwd"]
    attr = tree.attr(_at(tree, "etc/passwd"))
    assert stat.S_ISCHR(attr.mode)
    assert (attr.rdev, attr.uid, attr.gid, attr.size, attr.nlink) == (0, 0, 0, 0, 1)
    assert stat.S_IMODE(attr.mode) == 0


def test_whiteout_is_hidden_when_the_layer_also_has_the_name(tmp_path: Path) -> None:
    items = [
        Item("a", "dir", mode=0o755),
        Item("a/.wh.x", "reg", b""),
        Item("a/x", "reg", b"real"),
        Item("a/.wh.gone", "reg", b""),
    ]
    tree = LayerTree(build_items(tmp_path, items).toc)
    a = _at(tree, "a")
    assert [name for name, _ in tree.children(a)] == [b"gone", b"x"]
    assert stat.S_ISREG(tree.attr(_at(tree, "a/x")).mode)
    assert tree.attr(_at(tree, "a/x")).size == 4
    assert stat.S_ISCHR(tree.attr(_at(tree, "a/gone")).mode)


def test_opaque_marker_is_hidden_and_its_directory_reports_the_xattr(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "whiteouts").toc)
    opt = _at(tree, "opt")
    assert [name for name, _ in tree.children(opt)] == [b"new"]
    assert tree.lookup(opt, b".wh..wh..opq") is None
    assert dict(tree.xattrs(opt)) == {OPAQUE_XATTR: b"y"}
    assert dict(tree.xattrs(_at(tree, "etc"))) == {}


def test_opaque_xattr_joins_the_directory_s_own_xattrs(tmp_path: Path) -> None:
    items = [
        Item("d", "dir", mode=0o755, xattrs={"user.note": b"kept"}),
        Item("d/.wh..wh..opq", "reg", b""),
    ]
    tree = LayerTree(build_items(tmp_path, items).toc)
    assert dict(tree.xattrs(_at(tree, "d"))) == {b"user.note": b"kept", OPAQUE_XATTR: b"y"}


@pytest.mark.parametrize("prioritized", [(), ("etc/hostname",)])
def test_landmarks_are_hidden(tmp_path: Path, prioritized: tuple[str, ...]) -> None:
    blob = build_case(tmp_path, "everything", estargz.BuildOptions(prioritized=prioritized))
    landmark = ".prefetch.landmark" if prioritized else ".no.prefetch.landmark"
    assert blob.toc.lookup(landmark) is not None
    tree = LayerTree(blob.toc)
    assert tree.lookup(ROOT, landmark.encode()) is None
    assert {name for name, _ in tree.children(ROOT)} == {
        b"etc",
        b"bin",
        b"data",
        "données".encode(),
        b"var",
        b"dev",
    }


def test_toc_name_is_hidden_at_the_root_only() -> None:
    toc = toc_of(
        [
            TOCEntry(name="stargz.index.json", type="reg", size=2, mode=0o644),
            TOCEntry(name="sub", type="dir", mode=0o755),
            TOCEntry(name="sub/stargz.index.json", type="reg", size=2, mode=0o644),
        ]
    )
    tree = LayerTree(toc)
    assert [name for name, _ in tree.children(ROOT)] == [b"sub"]
    sub = _at(tree, "sub")
    assert [name for name, _ in tree.children(sub)] == [b"stargz.index.json"]


def test_hardlinks_share_a_node_and_count_their_names(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "hardlinks").toc)
    original = _at(tree, "x/original")
    assert _at(tree, "x/second") == original
    assert _at(tree, "third") == original
    assert tree.attr(original).nlink == 3
    assert tree.path(original) == "x/original"


def test_directory_nlink_is_two_plus_visible_subdirectories(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "everything").toc)
    assert tree.attr(ROOT).nlink == 2 + 6
    assert tree.attr(_at(tree, "var")).nlink == 3  # cache; the whiteout is no directory
    assert tree.attr(_at(tree, "data")).nlink == 3  # the "dddd..." directory
    assert tree.attr(_at(tree, "etc")).nlink == 2


def test_attributes_follow_the_toc(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "everything").toc)

    tool = tree.attr(_at(tree, "bin/tool"))
    assert tool.mode == stat.S_IFREG | 0o4755
    assert (tool.size, tool.blocks, tool.nlink, tool.mtime_ns) == (3000, 8, 1, MTIME_NS)

    data = tree.attr(_at(tree, "data"))
    assert (data.mode, data.uid, data.gid) == (stat.S_IFDIR | 0o700, 1000, 1000)

    null = tree.attr(_at(tree, "dev/null"))
    assert (null.mode, null.rdev) == (stat.S_IFCHR | 0o666, os.makedev(1, 3))
    loop = tree.attr(_at(tree, "dev/loop0"))
    assert (loop.mode, loop.rdev) == (stat.S_IFBLK | 0o660, os.makedev(7, 0))
    assert tree.attr(_at(tree, "dev/pipe")).mode == stat.S_IFIFO | 0o600

    motd = _at(tree, "etc/motd")
    assert tree.attr(motd).mode == stat.S_IFLNK | 0o777
    assert tree.readlink(motd) == b"hostname"
    assert tree.attr(motd).size == len(b"hostname")
    with pytest.raises(ValueError):
        tree.readlink(_at(tree, "etc/hostname"))

    zeros = tree.attr(_at(tree, "data/zeros"))
    assert zeros.size == 9 * (1 << 20) + 123
    assert zeros.blocks == -(-zeros.size // 4096) * 8
    assert tree.attr(_at(tree, "etc/empty.conf")).blocks == 0


def test_xattrs_are_bytes_to_bytes(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "xattrs").toc)
    assert dict(tree.xattrs(_at(tree, "f"))) == {b"user.a": b"1", b"user.b": b"two"}
    assert dict(tree.xattrs(_at(tree, "cap"))) == {b"security.capability": bytes(range(20))}
    assert dict(tree.xattrs(_at(tree, "d"))) == {OPAQUE_XATTR: b"y"}  # the layer's own


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_is_found_where_the_toc_puts_it(tmp_path: Path, case: str) -> None:
    blob = build_case(tmp_path, case)
    tree = LayerTree(blob.toc)
    paths = walk(tree)
    for path, node in paths.items():
        parent, _, name = path.rpartition("/")
        whiteout = f"{parent}/.wh.{name}" if parent else f".wh.{name}"
        toc_node = blob.toc.lookup(path) or blob.toc.lookup(whiteout)
        assert toc_node is not None, path
        assert toc_node.id == node
        if blob.toc.lookup(path) is not None and toc_node.path == path:
            assert tree.path(node) == path
    for dir_id in {ROOT, *(n for n in paths.values() if tree.is_dir(n))}:
        names = [name for name, _ in tree.children(dir_id)]
        assert names == sorted(names)
        assert len(set(names)) == len(names)


def test_children_is_an_indexable_view(tmp_path: Path) -> None:
    tree = LayerTree(build_case(tmp_path, "devices").toc)
    children = tree.children(_at(tree, "dev"))
    assert len(children) == 4
    assert children[0][0] == b"fifo"
    assert children[-1][0] == b"zero"
    assert [name for name, _ in children[1:3]] == [b"null", b"sda"]
    with pytest.raises(IndexError):
        children[4]
    assert len(tree.children(_at(tree, "dev/null"))) == 0


def test_chunks_match_the_toc(tmp_path: Path) -> None:
    blob = build_case(tmp_path, "chunk-boundaries", estargz.BuildOptions(chunk_size=1 << 20))
    tree = LayerTree(blob.toc)
    for name in ("exact", "plus-one", "minus-one", "three-chunks"):
        node = blob.toc.lookup(name)
        assert node is not None
        size = node.size
        for offset, length in [(0, 1), (0, size), (1 << 20, 1), ((1 << 20) - 1, 2), (size - 1, 10)]:
            assert tree.chunks_for(node.id, offset, length) == blob.toc.chunks_for_range(
                node, offset, length
            )
        assert tree.chunks_for(node.id, size, 10) == []
    hidden = {".no.prefetch.landmark"}
    visible = [c for n in blob.toc.nodes if n.path not in hidden for c in n.chunks]
    assert list(tree.all_chunks()) == visible


def test_odd_chunk_digests_are_kept_verbatim() -> None:
    toc = toc_of([TOCEntry(name="f", type="reg", size=5, mode=0o644)])
    toc.nodes[1].chunks[0] = estargz.Chunk("f", 1, 101, 0, 0, 5, "sha512:abc")
    tree = LayerTree(toc)
    assert tree.chunks_for(1, 0, 5)[0].digest == "sha512:abc"


def test_the_tree_does_not_keep_the_toc(tmp_path: Path) -> None:
    options = estargz.BuildOptions(prioritized=("etc/hostname",))
    blob = build_case(tmp_path, "everything", options)
    tree = LayerTree(blob.toc)
    zone = blob.toc.prefetch_zone
    assert zone > 0
    ref = weakref.ref(blob.toc)
    expected = blob.toc.chunks_for_range(blob.toc.lookup("data/exact-4MiB"), 0, 10)  # type: ignore[arg-type]
    del blob
    gc.collect()
    assert ref() is None
    assert tree.chunks_for(_at(tree, "data/exact-4MiB"), 0, 10) == expected
    assert tree.prefetch_zone == zone


def test_an_owner_out_of_range_is_a_format_error() -> None:
    toc = toc_of([TOCEntry(name="f", type="reg", size=1, mode=0o644, uid=1 << 32)])
    with pytest.raises(FormatError, match="out of range"):
        LayerTree(toc)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("prioritized", [(), ("etc/hostname",)])
def test_the_tree_built_from_the_toc_json_is_the_tree_of_the_toc(
    tmp_path: Path, case: str, prioritized: tuple[str, ...]
) -> None:
    options = estargz.BuildOptions(prioritized=prioritized, chunk_size=1 << 20)
    blob = build_case(tmp_path, case, options)
    streamed = LayerTree.from_loader(blob.loader())
    assert observe(streamed) == observe(LayerTree(blob.toc))


def test_find_walks_directories_and_never_a_symlink() -> None:
    toc = toc_of(
        [
            TOCEntry(name="usr", type="dir", mode=0o755),
            TOCEntry(name="usr/lib", type="dir", mode=0o755),
            TOCEntry(name="usr/lib/a.py", type="reg", size=2, mode=0o644),
            TOCEntry(name="lib", type="symlink", link_name="usr/lib", mode=0o777),
        ]
    )
    tree = LayerTree(toc)
    assert tree.find("usr/lib/a.py") == _at(tree, "usr/lib/a.py")
    assert tree.find("/usr/lib/a.py") == tree.find("usr//lib/a.py") == _at(tree, "usr/lib/a.py")
    assert tree.find("") == ROOT
    assert tree.find("lib") == _at(tree, "lib")  # the symlink itself
    assert tree.find("lib/a.py") is None  # not through it
    assert tree.find("usr/lib/a.py/x") is None  # a file is no directory
    assert tree.find("usr/nothing") is None
