"""An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/...``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from lazyimage.errors import FormatError, NotFoundError
from lazyimage.oci import _mediatypes as mt
from lazyimage.oci._digest import check_digest, is_digest, sha256_digest
from lazyimage.oci._model import Descriptor, Index

__all__ = ["REF_NAME_ANNOTATION", "OCILayout"]

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


class OCILayout:
    """Reads and writes an OCI layout. Writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: Path | str) -> OCILayout:
        layout = cls(root)
        (layout.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (layout.root / "oci-layout").exists():
            layout._write_atomic(layout.root / "oci-layout", json.dumps(_LAYOUT_FILE).encode())
        if not (layout.root / "index.json").exists():
            layout._write_index(Index(mt.OCI_INDEX, []))
        return layout

    def exists(self) -> bool:
        return (self.root / "oci-layout").is_file() and (self.root / "index.json").is_file()

    # Blobs

    def blob_path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise FormatError(f"invalid digest {digest!r}")
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} not in OCI layout {self.root}") from None
        check_digest(data, digest, f"blob {digest} in {self.root}")
        return data

    def write_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(path, data)
        return digest

    def import_blob_file(self, source: Path, digest: str) -> None:
        """Copy a file that is already known to hash to ``digest`` into the layout."""
        path = self.blob_path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # The index

    def index(self) -> Index:
        try:
            data = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.root} is not an OCI layout (no index.json)") from None
        return Index.parse(data, mt.OCI_INDEX)

    def resolve(self, tag: str = "") -> Descriptor:
        """The index entry named ``tag``; with no tag, the only entry or the one named latest."""
        entries = self.index().manifests
        if tag:
            for desc in entries:
                if desc.annotations.get(REF_NAME_ANNOTATION) == tag:
                    return desc
            raise NotFoundError(f"tag {tag!r} not found in OCI layout {self.root}")
        if len(entries) == 1:
            return entries[0]
        for desc in entries:
            if desc.annotations.get(REF_NAME_ANNOTATION) == "latest":
                return desc
        raise NotFoundError(
            f"OCI layout {self.root} holds {len(entries)} images; name one with oci:DIR:TAG"
        )

    def set_tag(self, desc: Descriptor, tag: str = "") -> None:
        """Add ``desc`` to index.json under ``tag``, replacing any entry with that tag."""
        annotations = dict(desc.annotations)
        if tag:
            annotations[REF_NAME_ANNOTATION] = tag
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.platform)
        current = self.index()
        kept = [
            d
            for d in current.manifests
            if not (tag and d.annotations.get(REF_NAME_ANNOTATION) == tag)
            and not (not tag and d.digest == desc.digest)
        ]
        self._write_index(Index(current.media_type, [*kept, entry], current.annotations))

    def _write_index(self, index: Index) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_atomic(self.root / "index.json", index.to_bytes())

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
