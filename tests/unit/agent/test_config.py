"""The agent's flags and their LAZYIMAGE_* variables: values, defaults, and refusals that name
the flag or the variable (argparse's exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lazyimage import names
from lazyimage.agent.config import parse_config

pytestmark = pytest.mark.timeout(30)


def test_defaults_have_no_control_api() -> None:
    config = parse_config([], {})
    assert config.control_socket is None
    assert config.listen == "127.0.0.1:9090"
    assert config.background_fill is True
    assert config.cache_size == 10 << 30


def test_the_control_socket_from_the_flag_or_the_variable() -> None:
    assert parse_config(["--control-socket", "/run/c.sock"], {}).control_socket == Path(
        "/run/c.sock"
    )
    env = {"LAZYIMAGE_CONTROL_SOCKET": "/run/e.sock"}
    assert parse_config([], env).control_socket == Path("/run/e.sock")
    assert parse_config(["--control-socket", "/run/f.sock"], env).control_socket == Path(
        "/run/f.sock"
    )


def test_variables_set_every_kind_of_value() -> None:
    env = {
        "LAZYIMAGE_CACHE_SIZE": "1048576",
        "LAZYIMAGE_PREFETCH_BANDWIDTH": "0",
        "LAZYIMAGE_BACKGROUND_FILL": "off",
        "LAZYIMAGE_BACKGROUND_QUIET": "0.5",
        "LAZYIMAGE_STALL_TIMEOUT": "3",
        "LAZYIMAGE_LISTEN": "[::1]:0",
        "LAZYIMAGE_LOG_LEVEL": "DEBUG",
        "LAZYIMAGE_INSECURE_REGISTRY": "a:5000, b:5000,",
        "LAZYIMAGE_NODE_NAME": "node-1",
        "LAZYIMAGE_PROFILE_WINDOW": "0",
    }
    config = parse_config([], env)
    assert config.cache_size == 1 << 20
    assert config.prefetch_bandwidth == 0
    assert config.background_fill is False  # "off" used to count as true
    assert (config.background_quiet, config.stall_timeout) == (0.5, 3.0)
    assert config.listen == "[::1]:0"
    assert config.log_level == "debug"
    assert config.insecure_registries == ("a:5000", "b:5000")
    assert (config.node_name, config.profile_window) == ("node-1", 0.0)


def test_the_old_switch_off_asks_for_the_default() -> None:
    assert parse_config(["--no-control-api"], {}).control_socket is None
    assert parse_config([], {"LAZYIMAGE_CONTROL_API": "false"}).control_socket is None


def test_the_old_switch_on_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([], {"LAZYIMAGE_CONTROL_API": "true"})
    assert exited.value.code == 2
    assert "use --control-socket PATH" in capsys.readouterr().err


def test_empty_variables_count_as_unset() -> None:
    env = {"LAZYIMAGE_CACHE_SIZE": "", "LAZYIMAGE_CONTROL_SOCKET": " ", "LAZYIMAGE_NODE_NAME": ""}
    config = parse_config([], env)
    assert (config.cache_size, config.control_socket, config.node_name) == (10 << 30, None, None)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("LAZYIMAGE_CACHE_SIZE", "lots", "not a whole number"),
        ("LAZYIMAGE_CACHE_SIZE", "0", "must be greater than 0"),
        ("LAZYIMAGE_PREFETCH_BANDWIDTH", "-1", "must not be negative"),
        ("LAZYIMAGE_BACKGROUND_FILL", "maybe", "expected one of 1, true"),
        ("LAZYIMAGE_STALL_TIMEOUT", "0", "must be greater than 0"),
        ("LAZYIMAGE_REPORT_INTERVAL", "nan", "not a finite number"),
        ("LAZYIMAGE_LISTEN", "9090", "expected HOST:PORT"),
        ("LAZYIMAGE_LOG_LEVEL", "loud", "expected one of debug, info"),
    ],
)
def test_a_bad_variable_is_refused_by_name(
    name: str, value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([], {name: value})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{name}={value!r}: {reason}" in err, err


def test_every_bad_variable_is_named_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"LAZYIMAGE_CACHE_SIZE": "lots", "LAZYIMAGE_STALL_TIMEOUT": "soon"}
    with pytest.raises(SystemExit):
        parse_config([], env)
    err = capsys.readouterr().err
    assert "LAZYIMAGE_CACHE_SIZE='lots'" in err and "LAZYIMAGE_STALL_TIMEOUT='soon'" in err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--cache-size", "-5"], "--cache-size: must be greater than 0"),
        (["--stall-timeout", "0"], "--stall-timeout: must be greater than 0"),
        (["--listen", "localhost"], "--listen: expected HOST:PORT"),
        (["--control-api"], "--control-api (LAZYIMAGE_CONTROL_API) is gone"),
        (["--socket", "/run/s.sock", "--control-socket", "/run/s.sock"], "must not be the"),
    ],
)
def test_a_bad_flag_is_refused(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert complaint in err, err


def test_the_registry_config_is_containerds_when_the_node_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs_d = tmp_path / "certs.d"
    monkeypatch.setattr(names, "DEFAULT_REGISTRY_CONFIG", str(certs_d))
    assert parse_config([], {}).registry_config is None
    certs_d.mkdir()
    assert parse_config([], {}).registry_config == certs_d
    other = tmp_path / "other"
    other.mkdir()
    assert parse_config([], {"LAZYIMAGE_REGISTRY_CONFIG": str(other)}).registry_config == other
    assert parse_config(["--registry-config", str(other)], {}).registry_config == other
    # An empty flag turns it off; an empty variable counts as unset.
    assert parse_config(["--registry-config", ""], {}).registry_config is None
    assert parse_config([], {"LAZYIMAGE_REGISTRY_CONFIG": ""}).registry_config == certs_d


def test_a_registry_config_that_is_not_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SystemExit) as exited:
        parse_config(["--registry-config", str(missing)], {})
    assert exited.value.code == 2
    assert f"--registry-config: {missing} is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        parse_config([], {"LAZYIMAGE_REGISTRY_CONFIG": str(missing)})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"LAZYIMAGE_REGISTRY_CONFIG='{missing}': {missing} is not a directory" in err
