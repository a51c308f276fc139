"""A reader failure is EIO on that read only, logged with the layer, file and offset."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from tests.integration.fusefs.harness import Mounts
from tests.integration.fusefs.layers import build_layer, forge_chunk
from tests.layercases import Item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GOOD = random.Random(1).randbytes(20_000)
BAD = random.Random(2).randbytes(20_000)
ITEMS = [Item("good.bin", "reg", GOOD), Item("bad.bin", "reg", BAD)]


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _failures(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == "read failed"]


def test_a_forged_chunk_is_eio_and_never_served(mounts: Mounts, tmp_path: Path) -> None:
    blob = build_layer(ITEMS, tmp_path / "forged.esgz", level=0)
    forge_chunk(blob, "bad.bin")
    server = mounts.server()
    layer = server.add("forged", blob)

    with pytest.raises(OSError) as raised:
        _read(layer / "bad.bin")
    assert raised.value.errno == errno.EIO
    with open(layer / "bad.bin", "rb") as f, pytest.raises(OSError):  # and again
        f.read(10)
    assert _read(layer / "good.bin") == GOOD

    failures = _failures(server.log_events())
    assert failures
    assert failures[0]["layer"] == "forged"
    assert failures[0]["file"] == "bad.bin"
    assert failures[0]["offset"] == 0
    assert "VerificationError" in str(failures[0]["error"])


def test_an_unavailable_registry_is_eio_until_it_returns(mounts: Mounts, tmp_path: Path) -> None:
    blob = build_layer(ITEMS, tmp_path / "layer.esgz")
    server = mounts.server()
    layer = server.add("flaky", blob)

    server.fail("flaky", True)
    with pytest.raises(OSError) as raised:
        _read(layer / "bad.bin")
    assert raised.value.errno == errno.EIO
    server.fail("flaky", False)
    assert _read(layer / "bad.bin") == BAD  # nothing wrong was cached by the kernel

    failures = _failures(server.log_events())
    assert failures  # the kernel may retry a failed read once, synchronously
    assert {(f["layer"], f["file"], f["offset"]) for f in failures} == {("flaky", "bad.bin", 0)}
    assert "UnavailableError" in str(failures[0]["error"])
