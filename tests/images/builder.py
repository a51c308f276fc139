"""Builds test images into the cache: temp dir, then one atomic rename.

Cache layout, under ``cache_root()``::

    images/<name>-<key>/          a finished image (only ever created by rename)
        oci/                      OCI image layout, one manifest tagged "latest"
        info.json                 recipe, package versions, layer sizes, build timings
        build.log                 the raw debootstrap output (debootstrap images)
    images/.tmp-<name>-<key>-*    a build in progress, or one that was interrupted
    images/.locks/<name>-<key>.lock
    debs/<suite>-<arch>/          debootstrap --cache-dir
    debs/<package>/               .debs fetched with apt-get download

``<key>`` hashes the recipe, the keys of the images it derives from, and the source of
this package, so editing a recipe or the builder builds a new image next to the old one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyimage.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
    OCILayout,
    Platform,
    dumps_canonical,
)

from tests.fixtures.cache import cache_root
from tests.images import _proc, rootfs
from tests.images.layers import (
    LayerBlob,
    LayerWriter,
    add_rootfs_path,
    assign_layers,
)
from tests.images.recipes import (
    RECIPES,
    BusyboxRecipe,
    DebootstrapRecipe,
    Recipe,
    TopLayer,
    VariantRecipe,
)

__all__ = [
    "IMAGE_TAG",
    "BuildError",
    "build",
    "find_image",
    "human_size",
    "image_dir",
    "images_root",
    "recipe_key",
]

IMAGE_TAG = "latest"
_SOURCE_DIR = Path(__file__).resolve().parent
_ARCHITECTURES = {"amd64": "amd64", "arm64": "arm64"}


class BuildError(RuntimeError):
    """An image could not be built."""


Log = Callable[[str], None]


def images_root() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _source_digest() -> str:
    """Read once per process, so one run's keys agree even if the files are edited meanwhile."""
    h = hashlib.sha256()
    for path in sorted(_SOURCE_DIR.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def recipe_key(name: str) -> str:
    """16 hex digits naming this recipe, what it derives from, and the builder's source."""
    recipe = _recipe(name)
    h = hashlib.sha256()
    h.update(json.dumps(recipe.to_json(), sort_keys=True).encode())
    if isinstance(recipe, VariantRecipe):
        h.update(b"base:" + recipe_key(recipe.base).encode())
    h.update(b"source:" + _source_digest().encode())
    return h.hexdigest()[:16]


def _recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise BuildError(f"no test image {name!r}; known: {', '.join(RECIPES)}") from None


def image_dir(name: str) -> Path:
    return images_root() / f"{name}-{recipe_key(name)}"


def find_image(name: str) -> Path | None:
    """The finished image directory for the current recipe, if it has been built."""
    path = image_dir(name)
    return path if (path / "info.json").is_file() else None


# Building


class _Clock:
    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self._log = log
        self.start = time.monotonic()
        self.steps: dict[str, float] = {}
        self._step_start = self.start

    def log(self, message: str) -> None:
        self._log(f"[{time.monotonic() - self.start:7.1f}s] {self.name}: {message}")

    def step(self, label: str) -> None:
        now = time.monotonic()
        self.steps[label] = round(now - self._step_start, 1)
        self._step_start = now

    @property
    def total(self) -> float:
        return round(time.monotonic() - self.start, 1)


@contextlib.contextmanager
def _locked(path: Path, log: Log, timeout: float = 3600.0) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not waiting:
                log(f"waiting for another build holding {path}")
                waiting = True
            if time.monotonic() > deadline:
                raise BuildError(f"gave up waiting for {path} after {timeout:.0f}s")
            time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finish_tree(root: Path) -> None:
    """Make the finished image world-readable (temp files start as 0600) and durable."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build(name: str, *, force: bool = False, log: Log = print) -> Path:
    """Build image ``name`` (and what it derives from) unless the cache has it; returns its dir."""
    recipe = _recipe(name)
    if isinstance(recipe, VariantRecipe):
        build(recipe.base, log=log)
    key = recipe_key(name)
    final = images_root() / f"{name}-{key}"
    if not force and (final / "info.json").is_file():
        log(f"{name}: cached at {final}")
        return final
    with _locked(images_root() / ".locks" / f"{name}-{key}.lock", log):
        if not force and (final / "info.json").is_file():
            log(f"{name}: built meanwhile by another process, at {final}")
            return final
        for stale in images_root().glob(f".tmp-{name}-{key}-*"):
            log(f"{name}: removing the leftovers of an interrupted build: {stale}")
            _proc.remove_tree(stale)
        work = images_root() / f".tmp-{name}-{key}-{os.getpid()}"
        work.mkdir()
        try:
            clock = _Clock(name, log)
            out = work / "image"
            out.mkdir()
            if isinstance(recipe, DebootstrapRecipe):
                _build_debootstrap(recipe, key, work, out, clock)
            elif isinstance(recipe, BusyboxRecipe):
                _build_busybox(recipe, key, work, out, clock)
            else:
                _build_variant(recipe, key, work, out, clock)
            _finish_tree(out)
            if force and final.exists():
                _proc.remove_tree(final)
            os.rename(out, final)
            clock.log(f"done in {clock.total:.1f}s: {final}")
        finally:
            _proc.remove_tree(work)
    return final


@dataclass
class _ImageParts:
    layers: list[LayerBlob] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def _created(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _write_image(
    *,
    name: str,
    key: str,
    out: Path,
    parts: _ImageParts,
    arch: str,
    env: tuple[str, ...],
    cmd: tuple[str, ...],
    epoch: int,
    info: dict[str, Any],
    clock: _Clock,
) -> None:
    layout = OCILayout.create(out / "oci")
    for blob in parts.layers:
        layout.import_blob_file(blob.path, blob.digest)
    config = {
        "created": _created(epoch),
        "architecture": _ARCHITECTURES[arch],
        "os": "linux",
        "config": {
            "Env": list(env),
            "Cmd": list(cmd),
            "WorkingDir": "/",
            "Labels": {"io.lazyimage.test-image": name},
        },
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in parts.layers]},
        "history": parts.history,
    }
    _write_manifest(layout, config, parts.layers, arch)
    _write_info(out, name=name, key=key, layout=layout, layers=parts.layers, info=info, clock=clock)


def _write_manifest(
    layout: OCILayout, config: dict[str, Any], layers: list[LayerBlob], arch: str
) -> Descriptor:
    config_bytes = dumps_canonical(config)
    config_desc = Descriptor(OCI_CONFIG, layout.write_blob(config_bytes), len(config_bytes))
    manifest = Manifest(
        OCI_MANIFEST,
        config_desc,
        [Descriptor(OCI_LAYER_GZIP, b.digest, b.size) for b in layers],
    )
    manifest_bytes = manifest.to_bytes()
    platform = Platform("linux", _ARCHITECTURES[arch])
    desc = Descriptor(
        OCI_MANIFEST,
        layout.write_blob(manifest_bytes),
        len(manifest_bytes),
        platform=platform,
        raw={"platform": {"architecture": platform.architecture, "os": platform.os}},
    )
    layout.set_tag(desc, IMAGE_TAG)
    return desc


def _write_info(
    out: Path,
    *,
    name: str,
    key: str,
    layout: OCILayout,
    layers: list[LayerBlob],
    info: dict[str, Any],
    clock: _Clock,
) -> None:
    desc = layout.resolve(IMAGE_TAG)
    clock.step("write OCI layout")
    record = {
        "name": name,
        "key": key,
        "tag": IMAGE_TAG,
        "manifest_digest": desc.digest,
        "layers": [
            {
                "digest": b.digest,
                "size": b.size,
                "diff_id": b.diff_id,
                "uncompressed_size": b.uncompressed_size,
                "entries": b.entries,
            }
            for b in layers
        ],
        **info,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": {**clock.steps, "total": clock.total},
    }
    (out / "info.json").write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    for i, b in enumerate(layers):
        clock.log(
            f"layer {i}: {human_size(b.size):>9} gzip, {human_size(b.uncompressed_size):>9} tar,"
            f" {b.entries} entries, {b.digest[:19]}"
        )


def human_size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _pack_rootfs(
    root: Path,
    recipe: DebootstrapRecipe | BusyboxRecipe,
    epoch: int,
    work: Path,
    clock: _Clock,
    created_by: str,
) -> _ImageParts:
    parts = _ImageParts()
    assigned = assign_layers(root, recipe.splits, log=clock.log)
    comments = [recipe.base_comment, *(s.comment for s in recipe.splits)]
    names = ["base", *(s.name for s in recipe.splits)]
    for index, paths in enumerate(assigned):
        writer = LayerWriter(work / f"layer-{index}.tar.gz")
        with writer as tar:
            for rel in paths:
                add_rootfs_path(tar, root, rel, epoch=epoch, log=clock.log)
        parts.layers.append(writer.result)
        parts.history.append(
            {
                "created": _created(epoch),
                "created_by": f"{created_by} # layer {names[index]}",
                "comment": comments[index],
            }
        )
        clock.log(f"packed layer {names[index]}: {writer.result.entries} entries")
    return parts


def _build_debootstrap(
    recipe: DebootstrapRecipe, key: str, work: Path, out: Path, clock: _Clock
) -> None:
    root = work / "rootfs"
    deb_cache = cache_root() / "debs" / f"{recipe.suite}-{recipe.arch}"
    rootfs.debootstrap(recipe, root, deb_cache=deb_cache, raw_log=out / "build.log", log=clock.log)
    clock.step("debootstrap")
    rootfs.run_in_chroot(root, recipe.chroot_commands, clock.log)
    epoch = rootfs.normalize_rootfs(root, recipe, clock.log)
    packages = rootfs.package_versions(root)
    clock.step("normalize rootfs")
    created_by = (
        f"debootstrap --variant={recipe.variant} --include={','.join(recipe.include)}"
        f" {recipe.suite}"
    )
    parts = _pack_rootfs(root, recipe, epoch, work, clock, created_by)
    if recipe.top is not None:
        blob = _write_top_layer(recipe.top, root, epoch, work / "layer-top.tar.gz")
        parts.layers.append(blob)
        parts.history.append(
            {
                "created": _created(epoch),
                "created_by": "lazyimage test fixture layer (tests/images/builder.py)",
                "comment": "whiteouts, an opaque dir, xattrs, hardlinks, symlinks, a large file",
            }
        )
        clock.log(f"packed the top layer: {blob.entries} entries")
    clock.step("pack layers")
    _write_image(
        name=recipe.name,
        key=key,
        out=out,
        parts=parts,
        arch=recipe.arch,
        env=recipe.env,
        cmd=recipe.cmd,
        epoch=epoch,
        info={
            "recipe": recipe.to_json(),
            "mtime_epoch": epoch,
            "debian_mirror": rootfs.DEBIAN_MIRROR,
            "packages": packages,
        },
        clock=clock,
    )


def _build_busybox(recipe: BusyboxRecipe, key: str, work: Path, out: Path, clock: _Clock) -> None:
    root = work / "rootfs"
    epoch, packages = rootfs.busybox_rootfs(
        recipe, root, deb_dir=cache_root() / "debs" / recipe.package, log=clock.log
    )
    clock.step("extract busybox-static")
    parts = _pack_rootfs(
        root, recipe, epoch, work, clock, f"dpkg-deb -x {recipe.package}_{packages[recipe.package]}"
    )
    clock.step("pack layers")
    _write_image(
        name=recipe.name,
        key=key,
        out=out,
        parts=parts,
        arch="amd64",
        env=recipe.env,
        cmd=recipe.cmd,
        epoch=epoch,
        info={"recipe": recipe.to_json(), "mtime_epoch": epoch, "packages": packages},
        clock=clock,
    )


# The python image's top layer


def _entry(
    name: str,
    kind: bytes,
    *,
    epoch: int,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    linkname: str = "",
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.uname = ""
    info.gname = ""
    info.mtime = epoch
    info.size = size
    info.linkname = linkname
    return info


def _write_top_layer(top: TopLayer, root: Path, epoch: int, path: Path) -> LayerBlob:
    """The synthetic layer on top of the python image; see ``recipes.TopLayer``."""
    for lower in (top.whiteout_file, top.whiteout_dir, top.opaque_dir, top.replaced_file):
        if not os.path.lexists(root / lower):
            raise BuildError(f"top layer: {lower} is not in the rootfs; update recipes.PYTHON_TOP")

    # name -> (TarInfo, content); parents are added from the rootfs, or as new 0755 dirs.
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
        parts = info.name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in entries:
                continue
            if os.path.lexists(root / parent):
                st = os.lstat(root / parent)
                entries[parent] = (
                    _entry(
                        parent,
                        tarfile.DIRTYPE,
                        epoch=min(int(st.st_mtime), epoch),
                        mode=st.st_mode & 0o7777,
                        uid=st.st_uid,
                        gid=st.st_gid,
                    ),
                    None,
                )
            else:
                entries[parent] = (_entry(parent, tarfile.DIRTYPE, epoch=epoch, mode=0o755), None)
        if data is not None:
            info.size = len(data)
        entries[info.name] = (info, data)

    def whiteout(lower: str) -> None:
        parent, _, base = lower.rpartition("/")
        add(_entry(f"{parent}/.wh.{base}", tarfile.REGTYPE, epoch=epoch))

    def text_file(name: str, text: str, mode: int = 0o644) -> None:
        add(_entry(name, tarfile.REGTYPE, epoch=epoch, mode=mode), text.encode())

    whiteout(top.whiteout_file)
    whiteout(top.whiteout_dir)
    add(_entry(f"{top.opaque_dir}/.wh..wh..opq", tarfile.REGTYPE, epoch=epoch))
    for name, text in top.opaque_files:
        text_file(f"{top.opaque_dir}/{name}", text)
    text_file(top.replaced_file, top.replaced_text)
    xattr = _entry(top.xattr_file, tarfile.REGTYPE, epoch=epoch)
    xattr.pax_headers = {f"SCHILY.xattr.{top.xattr_name}": top.xattr_value}
    add(xattr, b"this file carries an extended attribute\n")
    text_file(top.hardlinks[0], top.hardlink_text)
    add(_entry(top.hardlinks[1], tarfile.LNKTYPE, epoch=epoch, linkname=top.hardlinks[0]))
    add(_entry(top.symlink, tarfile.SYMTYPE, epoch=epoch, mode=0o777, linkname=top.symlink_target))
    add(
        _entry(
            top.abs_symlink,
            tarfile.SYMTYPE,
            epoch=epoch,
            mode=0o777,
            linkname=top.abs_symlink_target,
        )
    )
    owned = _entry(
        top.owned_file,
        tarfile.REGTYPE,
        epoch=epoch,
        mode=top.owned_mode,
        uid=top.owned_uid,
        gid=top.owned_gid,
    )
    add(owned, b"owned by a non-root user\n")
    text_file(top.app_file, top.app_text(), mode=0o755)
    add(_entry(top.big_file, tarfile.REGTYPE, epoch=epoch), top.big_file_bytes())

    writer = LayerWriter(path)
    with writer as tar:
        for name in sorted(entries, key=_top_layer_order):
            info, data = entries[name]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return writer.result


def _top_layer_order(name: str) -> list[tuple[int, str]]:
    """Sorted by path components, except that an opaque marker directly follows its
    directory, where Docker and BuildKit put it."""
    return [(0 if part == ".wh..wh..opq" else 1, part) for part in name.split("/")]


# python-v2


def _build_variant(recipe: VariantRecipe, key: str, work: Path, out: Path, clock: _Clock) -> None:
    base_dir = find_image(recipe.base)
    if base_dir is None:
        raise BuildError(f"{recipe.name}: base image {recipe.base} is not built")
    base = OCILayout(base_dir / "oci")
    base_manifest = Manifest.parse(base.read_blob(base.resolve(IMAGE_TAG).digest))
    base_config = ImageConfig.parse(base.read_blob(base_manifest.config.digest))
    base_info = json.loads((base_dir / "info.json").read_text())

    changed_index: int | None = None
    parts = _ImageParts(history=json.loads(json.dumps(base_config.raw.get("history", []))))
    for index, desc in enumerate(base_manifest.layers):
        src = base.blob_path(desc.digest)
        meta = base_info["layers"][index]
        if changed_index is None and _layer_has(src, recipe.path):
            changed_index = index
            writer = LayerWriter(work / f"layer-{index}.tar.gz")
            with writer as tar:
                _copy_with_change(src, tar, recipe.path, recipe.append_text.encode())
            parts.layers.append(writer.result)
            clock.log(f"rewrote layer {index} with {recipe.path} changed")
        else:
            parts.layers.append(
                LayerBlob(
                    path=src,
                    digest=desc.digest,
                    size=desc.size,
                    diff_id=base_config.diff_ids[index],
                    uncompressed_size=int(meta["uncompressed_size"]),
                    entries=int(meta["entries"]),
                )
            )
    if changed_index is None:
        raise BuildError(f"{recipe.name}: no layer of {recipe.base} holds {recipe.path}")
    parts.history[changed_index]["comment"] = (
        f"{parts.history[changed_index].get('comment', '')}; {recipe.name}: {recipe.path} changed"
    )
    clock.step("rewrite layer")

    layout = OCILayout.create(out / "oci")
    for blob in parts.layers:
        if blob.path == base.blob_path(blob.digest):
            _link_or_copy(layout, blob)  # the same bytes as the base image's blob
        else:
            layout.import_blob_file(blob.path, blob.digest)
    config = json.loads(json.dumps(base_config.raw))
    config["rootfs"]["diff_ids"] = [b.diff_id for b in parts.layers]
    config["history"] = parts.history
    config["config"]["Labels"] = {"io.lazyimage.test-image": recipe.name}
    _write_manifest(layout, config, parts.layers, base_info["recipe"]["arch"])
    _write_info(
        out,
        name=recipe.name,
        key=key,
        layout=layout,
        layers=parts.layers,
        info={
            "recipe": recipe.to_json(),
            "base": {"name": recipe.base, "key": base_info["key"]},
            "changed_layer": changed_index,
            "changed_path": recipe.path,
            "mtime_epoch": base_info["mtime_epoch"],
            "packages": base_info.get("packages", {}),
        },
        clock=clock,
    )


def _link_or_copy(layout: OCILayout, blob: LayerBlob) -> None:
    target = layout.blob_path(blob.digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob.path, target)
    except OSError:
        layout.import_blob_file(blob.path, blob.digest)


def _layer_has(blob: Path, name: str) -> bool:
    with gzip.open(blob, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return any(member.name == name for member in tar)


def _copy_with_change(blob: Path, out: tarfile.TarFile, name: str, append: bytes) -> None:
    with gzip.open(blob, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isreg():
                src = tar.extractfile(member)
                assert src is not None
                if member.name == name:
                    data = src.read() + append
                    member.size = len(data)
                    out.addfile(member, io.BytesIO(data))
                else:
                    out.addfile(member, src)
            else:
                out.addfile(member)
