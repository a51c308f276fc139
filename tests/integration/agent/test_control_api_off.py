"""With --no-control-api the agent's port still serves probes, metrics and status, but nothing
on it can mount, unmount or fetch: the port is reachable from other pods in a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.agent import AgentError
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_the_control_api_can_be_turned_off(registry: RegistryServer, agent_factory: Any) -> None:
    agent = agent_factory([registry.host], extra=["--no-control-api"])
    assert agent.request("GET", "/healthz") == "ok\n"
    assert "lazyimage_cache_bytes" in agent.request("GET", "/metrics")
    assert agent.request("GET", "/status")["ready"] is True
    body = {"ref": f"{registry.host}/a/b:1", "digest": "sha256:" + "1" * 64}
    for method, path, payload in (
        ("POST", "/v1/layers", {**body, "tocDigest": "sha256:" + "2" * 64}),
        ("GET", "/v1/layers", None),
        ("DELETE", "/v1/layers/" + "1" * 64, None),
        ("POST", "/v1/prefetch", {**body, "tocDigest": "sha256:" + "2" * 64}),
    ):
        with pytest.raises(AgentError) as refused:
            agent.request(method, path, payload)
        assert refused.value.status == 403
        assert "control API is off" in refused.value.body
    assert registry.access_log() == []  # nothing reached the registry
