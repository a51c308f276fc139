"""The real ``lazyimage-operator`` command refuses a bad flag or environment variable with a
message naming it and exit code 2 (README, "Prewarm: the operator"), never a traceback, before
it connects to anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_REPO = Path(__file__).resolve().parents[3]


def _run(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(str(_REPO / part) for part in ("nodeagent", "operator"))
    # A kubeconfig that does not exist: reaching it would be a failure of its own.
    args = [sys.executable, "-m", "lazyimage_operator.main", "--kubeconfig", "/nonexistent", *flags]
    return subprocess.run(
        args,
        env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("LAZYIMAGE_ORDER_REFRESH", "soon", "not a number"),
        ("LAZYIMAGE_ORDERS_PER_NODE", "1000", "must be at most 256"),
        ("LAZYIMAGE_STATUS_INTERVAL", "0", "must be greater than 0"),
        ("LAZYIMAGE_LIVENESS", "https://0.0.0.0:8080/healthz", "expected http://HOST:PORT/PATH"),
        ("LAZYIMAGE_METRICS", "9090", "expected HOST:PORT"),
        ("LAZYIMAGE_LOG_LEVEL", "loud", "expected one of debug, info"),
    ],
)
def test_a_bad_variable_stops_it_before_it_starts(variable: str, value: str, reason: str) -> None:
    done = _run(env={variable: value})
    assert done.returncode == 2, done.stderr
    assert f"{variable}={value!r}: {reason}" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "usage: lazyimage-operator" in done.stderr


def test_every_bad_variable_is_named_at_once() -> None:
    done = _run(env={"LAZYIMAGE_ORDER_REFRESH": "soon", "LAZYIMAGE_METRICS": "9090"})
    assert done.returncode == 2
    assert "LAZYIMAGE_ORDER_REFRESH='soon'" in done.stderr
    assert "LAZYIMAGE_METRICS='9090'" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_bad_flag() -> None:
    done = _run("--orders-per-node", "0")
    assert done.returncode == 2
    assert "--orders-per-node: must be greater than 0" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_an_empty_variable_counts_as_unset() -> None:
    done = _run("--help", env={"LAZYIMAGE_ORDER_REFRESH": "", "LAZYIMAGE_LOG_LEVEL": " "})
    assert done.returncode == 0, done.stderr
    assert "LAZYIMAGE_ORDER_REFRESH" in done.stdout
