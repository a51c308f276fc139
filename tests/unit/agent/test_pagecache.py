"""warm_files: each file read to its end once, within a byte limit, failures counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lazyimage.agent.pagecache import warm_files

pytestmark = pytest.mark.timeout(30)


def test_files_are_read_to_their_end_in_order_within_the_limit(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/big").write_bytes(b"x" * (3 << 20))  # several reads of the buffer
    (tmp_path / "small").write_bytes(b"abc")
    (tmp_path / "later").write_bytes(b"y" * 100)
    files = [("d/big", 3 << 20), ("small", 3), ("missing", 5), ("later", 100)]
    warmed = warm_files(tmp_path, files, limit=(3 << 20) + 50)
    assert (warmed.files, warmed.bytes) == (2, (3 << 20) + 3)
    assert warmed.failed == 1  # "missing"
    assert warmed.skipped == 1  # "later" would pass the limit


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    os.symlink(tmp_path / "target", tmp_path / "link")
    warmed = warm_files(tmp_path, [("link", 6)])
    assert (warmed.files, warmed.failed) == (0, 1)
