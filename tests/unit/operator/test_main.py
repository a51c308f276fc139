"""The operator's flags and their LAZYIMAGE_* defaults; the real command's refusals are in
tests/integration/operator/test_operator_command.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from lazyimage_operator.main import parse_config


def test_variables_set_every_value() -> None:
    config, level = parse_config(
        [],
        {
            "KUBECONFIG": "/etc/kube/config",
            "LAZYIMAGE_ORDER_REFRESH": "60",
            "LAZYIMAGE_ORDERS_PER_NODE": "256",
            "LAZYIMAGE_STATUS_INTERVAL": "0.5",
            "LAZYIMAGE_LIVENESS": "http://0.0.0.0:8080/healthz",
            "LAZYIMAGE_METRICS": "[::]:9100",
            "LAZYIMAGE_LOG_LEVEL": "WARNING",
            "LAZYIMAGE_LAZY_RUNTIME_CLASSES": "lazyimage, gpu-lazy,",
        },
    )
    # $KUBECONFIG is read where the configuration loads, which merges all its files.
    assert config.kubeconfig is None
    flagged, _ = parse_config(["--kubeconfig", "/etc/kube/config"], {})
    assert flagged.kubeconfig == Path("/etc/kube/config")
    assert config.order_refresh == timedelta(seconds=60)
    assert config.orders_per_node == 256
    assert config.status_interval == 0.5
    assert config.liveness == "http://0.0.0.0:8080/healthz"
    assert config.metrics == "[::]:9100"
    assert level == "WARNING"
    assert config.lazy_runtime_classes == {"lazyimage", "gpu-lazy"}


def test_flags_win_over_variables() -> None:
    config, _ = parse_config(["--orders-per-node", "8"], {"LAZYIMAGE_ORDERS_PER_NODE": "9"})
    assert config.orders_per_node == 8
    config, _ = parse_config(
        ["--lazy-runtime-class", "a", "--lazy-runtime-class", "b"],
        {"LAZYIMAGE_LAZY_RUNTIME_CLASSES": "c"},
    )
    assert config.lazy_runtime_classes == {"a", "b"}
    config, _ = parse_config([], {})
    assert config.lazy_runtime_classes == frozenset()  # every annotated pod


def test_a_bad_variable_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([], {"LAZYIMAGE_LIVENESS": "http://host:port/x"})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "LAZYIMAGE_LIVENESS='http://host:port/x': expected http://HOST:PORT/PATH" in err
