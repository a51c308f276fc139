"""A write that fails: not stored, nothing left behind, counted every time, logged rarely."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from lazyimage.cache import ChunkCache, _report
from structlog.testing import capture_logs

from tests.unit.cache.helpers import make_chunk, metric_value, stored_files, temp_files


@pytest.mark.timeout(10)
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_failed_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    rng = random.Random(code)
    good, bad, later = (make_chunk(5000, rng) for _ in range(3))
    name = errno.errorcode[code]
    before = metric_value("lazyimage_cache_write_errors_total", errno=name)
    with ChunkCache(tmp_path, 1 << 20) as cache:
        assert cache.put(*good)
        real_fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with capture_logs() as logs:
            for _ in range(3):
                assert not cache.put(*bad)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert temp_files(tmp_path) == []
        assert not cache.contains(bad[0])
        assert cache.read(bad[0]) is None
        assert cache.stats().bytes == 5000  # the reservation was given back
        assert cache.read(good[0]) == good[1]
        assert cache.put(*later)  # the cache works again once the disk does
    assert metric_value("lazyimage_cache_write_errors_total", errno=name) - before == 3
    failures = [e for e in logs if e["event"] == "cache.write_failed"]
    assert len(failures) == 1  # once per errno per minute, not per chunk
    assert failures[0]["errno"] == name
    assert failures[0]["log_level"] == "warning"
    assert set(stored_files(tmp_path)) == {good[0], later[0]}


@pytest.mark.timeout(10)
def test_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest, data = make_chunk(5000, random.Random(1))
    with ChunkCache(tmp_path, 1 << 20) as cache:

        def failing_replace(src: object, dst: object) -> None:
            raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(os, "replace", failing_replace)
        assert not cache.put(digest, data)
        monkeypatch.undo()
        assert temp_files(tmp_path) == []
        assert stored_files(tmp_path) == {}
        assert cache.stats().bytes == 0


@pytest.mark.timeout(10)
def test_write_errors_are_logged_again_after_the_interval() -> None:
    now = [1000.0]
    reporter = _report.WriteErrorReporter(interval=60.0, clock=lambda: now[0])
    enospc = OSError(errno.ENOSPC, "No space left on device")
    eio = OSError(errno.EIO, "Input/output error")
    with capture_logs() as logs:
        for _ in range(5):  # t = 1000, 1020, 1040, 1060, 1080
            reporter.report(enospc, key="ab" * 32, size=1, root="/c")
            now[0] += 20
        reporter.report(eio, key="ab" * 32, size=1, root="/c")
    logged = [(e["errno"], e["suppressed_since_last"]) for e in logs]
    assert logged == [("ENOSPC", 0), ("ENOSPC", 2), ("EIO", 0)]
