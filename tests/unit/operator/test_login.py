"""kopf's login and the operator's own client share one KubeConfig: the same server, TLS
material and token, and one renewal between them (an exec plugin counts the runs)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from lazyimage_operator.handlers import OperatorKube

from tests.fixtures.kube_exec import ExecPlugin, kubeconfig_doc

pytestmark = [pytest.mark.timeout(60)]


def _kubeconfig(tmp_path: Path, plugin: ExecPlugin) -> Path:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    doc = kubeconfig_doc("https://kube.test:6443", plugin.user(), ca_file=ca)
    path = tmp_path / "config"
    path.write_text(json.dumps(doc))
    return path


def test_login_gives_kopf_what_the_client_uses(tmp_path: Path) -> None:
    plugin = ExecPlugin(tmp_path / "plugin", ["first", "second", "third"])
    kube = OperatorKube(_kubeconfig(tmp_path, plugin))

    async def main() -> None:
        config = await kube.config()  # the startup handler's client
        info = await kube.login()
        assert await kube.config() is config
        assert info.server == config.server == "https://kube.test:6443"
        assert info.ca_path == config.ca_file == tmp_path / "ca.crt"
        assert info.insecure is False
        assert (info.scheme, info.token) == ("Bearer", "first")
        assert info.certificate_path is None and info.private_key_path is None
        assert plugin.runs == 1

        # The client met a 401 first and renewed; kopf's own 401 then finds the new token.
        assert await config.credentials.renew("Bearer first") == "Bearer second"
        again = await kube.login()
        assert (again.scheme, again.token) == ("Bearer", "second")
        assert plugin.runs == 2

    anyio.run(main, backend="asyncio")  # kopf's event loop


def test_a_second_login_renews_the_token(tmp_path: Path) -> None:
    plugin = ExecPlugin(tmp_path / "plugin", ["first", "second"])
    kube = OperatorKube(_kubeconfig(tmp_path, plugin))

    async def main() -> tuple[str | None, str | None]:
        first = await kube.login()
        # kopf logs in again only after the server refused the token with 401.
        second = await kube.login()
        return first.token, second.token

    assert anyio.run(main, backend="asyncio") == ("first", "second")
    assert plugin.runs == 2
