"""The agent is SIGKILLed while a container's read waits on it. A new agent on the same socket
and state directory mounts the remote layers of its snapshots again, and a new container from
the image containerd already pulled starts and reads its files. With the FUSE holder (the
default) the new agent takes the mount over and the waiting read is answered; without it the
mount died with the agent, the read fails, and the new agent cleans the dead mount up."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from lazyimage.fusefs import mounts_under
from lazyimage.snapshotter._proto.cri.runtime.v1 import api_pb2 as api

from tests.fixtures.cri import CRIError, CRINode, CRINodeFactory, read_cri_log
from tests.fixtures.faults import Fault, FaultProxy
from tests.fixtures.images import IMAGE_TEST_TIMEOUT, TestImage
from tests.fixtures.registry import RegistryServer
from tests.images import PYTHON_PROBE_CODE, PYTHON_PROBE_OUTPUT, PYTHON_TOP
from tests.integration.agent.lazyimage_env import push_estargz
from tests.integration.cri.helpers import read_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]

BIG_FILE = f"/{PYTHON_TOP.big_file}"
BIG_SHA256 = hashlib.sha256(PYTHON_TOP.big_file_bytes()).hexdigest()


def _wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _log_of(sandbox: api.PodSandboxConfig, name: str) -> Path:
    return Path(sandbox.log_directory) / f"{name}/0.log"


def _snapshotter_answers(node: CRINode) -> bool:
    """containerd reaches the snapshotter again (it redials a proxy with a backoff)."""
    try:
        node.ctr("snapshots", "--snapshotter", "lazyimage", "ls", timeout=10)
    except CRIError:
        return False
    return True


@pytest.mark.parametrize("holder", [True, False], ids=["holder", "no-holder"])
def test_agent_killed_mid_read_recovers_and_new_containers_start(
    holder: bool,
    registry: RegistryServer,
    python_image: TestImage,
    agent_factory: Any,
    cri_node_factory: CRINodeFactory,
) -> None:
    converted = read_image(registry, push_estargz(python_image, registry, "cri/python").ref)
    top = converted.layers[-1]
    extra = ["--no-background-fill", "--fuse-holder" if holder else "--no-fuse-holder"]
    # The agent reaches the registry through a proxy that can hold a range read open.
    with FaultProxy(registry.host) as proxy:
        ref = converted.ref.replace(registry.host, proxy.host, 1)
        agent = agent_factory([proxy.host], extra=extra)
        node = cri_node_factory(agent, [proxy.host, registry])
        node.pull(ref)
        mounted = {layer["digest"] for layer in agent.request("GET", "/v1/layers")}
        assert mounted == {layer.digest for layer in converted.layers}

        # A container reads the big file of the top layer; its first range read stalls.
        proxy.add(Fault.stall(120), method="GET", path=f"/blobs/{top.digest}", times=None)
        sandbox_id, sandbox = node.start_pod("reader")
        reader = node.client.create_container(
            sandbox_id, sandbox, "reader", ref, ["sha256sum", BIG_FILE]
        )
        node.client.start_container(reader)
        _wait_for(
            "a stalled read of the top layer",
            lambda: any(r.fault == "stall" for r in proxy.requests),
        )
        time.sleep(0.2)
        running = node.client.container_status(reader).state
        assert running == api.ContainerState.CONTAINER_RUNNING  # blocked in the read
        proxy.clear()

        restarted = cri_node_factory.restart_agent(agent, [proxy.host], extra=extra)

        status = node.client.wait_container(reader, 60)
        if holder:
            # The read in flight was sent again to the new agent, and answered.
            assert status.exit_code == 0, node.log()
            lines = [line.text for line in read_cri_log(_log_of(sandbox, "reader"))]
            assert lines == [f"{BIG_SHA256}  {BIG_FILE}"]
        else:
            # The read failed with the dead connection; the container ended.
            assert status.exit_code != 0
        # One live FUSE mount on the mountpoint: the dead one is gone.
        at = str(restarted.mountpoint)
        fuse = [m for m in mounts_under(at) if m.is_fuse and m.mountpoint == at]
        assert len(fuse) == 1
        assert restarted.mountpoint.is_dir()
        ready = [e for e in restarted.log_events() if e.get("event") == "agent_ready"]
        assert ready and ready[-1]["unrestored"] == 0, restarted.log()
        restored = {layer["digest"] for layer in restarted.request("GET", "/v1/layers")}
        assert restored == mounted
        node.remove_pod(sandbox_id)

        # A new container from the image pulled before the crash.
        _wait_for("containerd reaching the new agent", lambda: _snapshotter_answers(node))
        command = ["sh", "-c", 'python3 -c "$1" && sha256sum "$2"', "sh", PYTHON_PROBE_CODE]
        run = node.run(ref, [*command, BIG_FILE], pull=False)
        assert run.exit_code == 0, (run.stderr, node.log())
        assert run.output == [PYTHON_PROBE_OUTPUT, f"{BIG_SHA256}  {BIG_FILE}"]
        read = [e["path"] for e in restarted.profile(top.digest.split(":", 1)[1])]
        assert PYTHON_TOP.big_file in read
