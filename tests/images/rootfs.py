"""Root filesystems from Debian packages: debootstrap, and a single extracted .deb."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from tests.images import _proc
from tests.images.layers import walk_rootfs
from tests.images.recipes import BusyboxRecipe, DebootstrapRecipe

__all__ = [
    "DEBIAN_MIRROR",
    "DebootstrapProgress",
    "busybox_rootfs",
    "clamp_mtimes",
    "debootstrap",
    "dpkg_epoch",
    "normalize_rootfs",
    "package_versions",
    "run_in_chroot",
]

# Not part of any cache key: any mirror of the same suite gives the same packages.
DEBIAN_MIRROR = os.environ.get("LAZYIMAGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")

DEBOOTSTRAP_TIMEOUT = 1800.0
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LINE_RE = re.compile(r"^([IWE]): (\S+)\s*(.*)$")


# debootstrap prints one "I: <Verb> <package>" line per package and step; these verbs
# are folded into a few phases, each reported once with per-verb counts.
_PHASES = {
    "Retrieving": "download",
    "Validating": "download",
    "Checking": "download",
    "Valid": "download",
    "Resolving": "download",
    "Found": "download",
    "Chosen": "download",
    "Extracting": "extract",
    "Installing": "install",
    "Unpacking": "install",
    "Configuring": "install",
    "Base": "install",
}


class DebootstrapProgress:
    """Condenses debootstrap's one-line-per-package output into one line per phase."""

    def __init__(self, log: Callable[[str], None], raw_log: Path) -> None:
        self._log = log
        self._raw = open(raw_log, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._start = time.monotonic()
        self._phase = ""
        self._counts: dict[str, int] = {}
        self._last = ""
        self._phase_start = self._start

    def line(self, text: str) -> None:
        self._raw.write(text + "\n")
        m = _LINE_RE.match(text)
        if not m:
            return
        level, verb, rest = m.groups()
        if level in ("W", "E"):
            self._log(f"debootstrap {level}: {verb} {rest}")
            return
        phase = _PHASES.get(verb, verb.lower())
        if phase != self._phase:
            self._flush()
            self._phase = phase
            self._phase_start = time.monotonic()
            self._counts = {}
        self._counts[verb] = self._counts.get(verb, 0) + 1
        self._last = f"{verb} {rest.rstrip('. ')}"

    def _summary(self) -> str:
        return ", ".join(f"{verb} {n}" for verb, n in self._counts.items() if n > 1) or self._last

    def tick(self) -> None:
        if self._phase:
            elapsed = time.monotonic() - self._start
            self._log(f"  [{elapsed:6.1f}s] {self._phase} ... {self._summary()} ({self._last})")

    def _flush(self) -> None:
        if not self._phase:
            return
        took = time.monotonic() - self._phase_start
        self._log(f"  {self._phase}: {self._summary()} ({took:.1f}s)")

    def close(self) -> None:
        self._flush()
        self._phase = ""
        self._raw.close()


def debootstrap(
    recipe: DebootstrapRecipe,
    target: Path,
    *,
    deb_cache: Path,
    raw_log: Path,
    log: Callable[[str], None],
) -> None:
    """Run debootstrap for ``recipe`` into ``target``; .debs are kept in ``deb_cache``."""
    deb_cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--arch={recipe.arch}",
        f"--include={','.join(recipe.include)}",
        f"--cache-dir={deb_cache.resolve()}",
        recipe.suite,
        os.fspath(target),
        DEBIAN_MIRROR,
    ]
    log("$ " + " ".join(cmd))
    env = {"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    progress = DebootstrapProgress(log, raw_log)
    try:
        _proc.run_streaming(
            cmd, timeout=DEBOOTSTRAP_TIMEOUT, on_line=progress.line, env=env, tick=progress.tick
        )
    except _proc.CommandError:
        progress.close()
        inner = target / "debootstrap" / "debootstrap.log"
        for source in (raw_log, inner):
            if source.is_file():
                tail = source.read_text(errors="replace").splitlines()[-30:]
                log(f"--- last lines of {source} ---")
                for line in tail:
                    log("  " + line)
        raise
    progress.close()


def run_in_chroot(
    root: Path, commands: tuple[tuple[str, ...], ...], log: Callable[[str], None]
) -> None:
    env = {"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8"}
    for cmd in commands:
        log("$ chroot ROOT " + " ".join(cmd))
        _proc.run(["chroot", root, *cmd], timeout=600, env=env)


def _prune(root: Path, patterns: tuple[str, ...], log: Callable[[str], None]) -> None:
    doomed: list[str] = []
    for rel in walk_rootfs(root):
        # walk_rootfs lists a directory's contents right after it.
        if doomed and rel.startswith(doomed[-1] + "/"):
            continue
        for pattern in patterns:
            if not fnmatch.fnmatchcase(rel, pattern.rstrip("/")):
                continue
            if pattern.endswith("/") and not stat.S_ISDIR(os.lstat(root / rel).st_mode):
                continue
            doomed.append(rel)
            break
    for rel in doomed:
        path = root / rel
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    log(f"pruned {len(doomed)} paths ({', '.join(patterns)})")


def dpkg_epoch(root: Path) -> int:
    """The newest mtime among the regular files the installed packages shipped.

    dpkg gives package files the mtimes from the .debs, but directories, the merged-/usr
    symlinks and files that maintainer scripts write get the build's wall-clock time.
    Clamping every mtime to this epoch makes the rootfs metadata a function of the package
    set alone, and leaves every shipped file (so every ``.py`` a timestamp ``.pyc`` refers
    to) as it was.
    """
    newest = 0
    real_root = os.path.realpath(root)
    for listing in sorted((root / "var/lib/dpkg/info").glob("*.list")):
        for line in listing.read_text(errors="surrogateescape").splitlines():
            if not line.startswith("/") or line == "/.":
                continue
            path = os.path.join(real_root, line.lstrip("/"))
            if not os.path.realpath(os.path.dirname(path)).startswith(real_root + "/"):
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # pruned
                continue
            if stat.S_ISREG(st.st_mode):
                newest = max(newest, int(st.st_mtime))
    if newest == 0:
        raise RuntimeError(f"no dpkg file lists under {root}")
    return newest


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Set every mtime (and atime) newer than ``epoch`` to ``epoch``; returns how many."""
    changed = 0
    paths = [*walk_rootfs(root)]
    # Children first, so clamping a file does not disturb its directory again.
    for rel in reversed(paths):
        path = root / rel
        st = os.lstat(path)
        if st.st_mtime > epoch:
            os.utime(path, (epoch, epoch), follow_symlinks=False)
            changed += 1
    return changed


def _normalize_shadow(root: Path, epoch: int) -> None:
    """/etc/shadow records the build day as the last password change; use the epoch's day."""
    path = root / "etc/shadow"
    if not path.is_file():
        return
    day = str(epoch // 86400)
    lines = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            fields[2] = day
        lines.append(":".join(fields))
    st = path.stat()
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.chown(path, st.st_uid, st.st_gid)


def normalize_rootfs(root: Path, recipe: DebootstrapRecipe, log: Callable[[str], None]) -> int:
    """Prune caches and logs and make the metadata deterministic; returns the mtime epoch."""
    _prune(root, recipe.prune, log)
    epoch = dpkg_epoch(root)
    _normalize_shadow(root, epoch)
    changed = clamp_mtimes(root, epoch)
    log(
        f"mtime epoch {epoch} ({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(epoch))} UTC);"
        f" clamped {changed} paths"
    )
    return epoch


def package_versions(root: Path) -> dict[str, str]:
    out = _proc.run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package}\t${Version}\n",
        ],
        timeout=60,
    )
    versions: dict[str, str] = {}
    for line in out.splitlines():
        name, _, version = line.partition("\t")
        if name:
            versions[name] = version
    return dict(sorted(versions.items()))


def _fetch_deb(package: str, deb_dir: Path, log: Callable[[str], None]) -> Path:
    """The cached .deb of ``package``, downloaded with ``apt-get download`` the first time."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(deb_dir.glob(f"{package}_*.deb"))
    if not cached:
        log(f"$ apt-get download {package}   (in {deb_dir})")
        _proc.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            cwd=deb_dir,
            timeout=300,
        )
        cached = sorted(deb_dir.glob(f"{package}_*.deb"))
        if not cached:
            raise RuntimeError(f"apt-get download {package} left no .deb in {deb_dir}")
    if len(cached) > 1:
        log(f"several cached .debs for {package}; using {cached[-1].name}")
    return cached[-1]


def busybox_rootfs(
    recipe: BusyboxRecipe, target: Path, *, deb_dir: Path, log: Callable[[str], None]
) -> tuple[int, dict[str, str]]:
    """Build the busybox rootfs; returns (mtime epoch, {package: version})."""
    deb = _fetch_deb(recipe.package, deb_dir, log)
    version = _proc.run(["dpkg-deb", "-f", deb, "Version"], timeout=60).strip()
    log(f"{recipe.package} {version} from {deb.name}")
    target.mkdir(parents=True)
    _proc.run(["dpkg-deb", "-x", deb, target], timeout=120)
    busybox = target / "bin" / "busybox"
    epoch = int(busybox.lstat().st_mtime)
    applets = _proc.run([busybox, "--list"], timeout=30).split()
    made = 0
    for name in sorted(set(applets)):
        if name == "busybox" or "/" in name:
            continue
        link = target / "bin" / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
            made += 1
    log(f"{made} applet symlinks in /bin")
    for rel, mode in recipe.dirs:
        path = target / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    for rel, text, mode in recipe.etc_files:
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    os.chmod(target, 0o755)
    clamp_mtimes(target, epoch)
    return epoch, {recipe.package: version}
