"""containerd's hosts.toml, parsed: host order, the server, each key's forms, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from lazyimage.errors import ConfigError
from lazyimage.registry._hostsfile import (
    ALL_CAPABILITIES,
    Capability,
    HostURL,
    RegistryHost,
    TLSSettings,
    parse_hosts_file,
)

pytestmark = pytest.mark.timeout(30)

FILE = Path("/etc/containerd/certs.d/docker.io/hosts.toml")
HERE = FILE.parent


def parse(text: str) -> tuple[RegistryHost, ...]:
    return parse_hosts_file(text.encode(), FILE).hosts


def test_hosts_come_in_file_order_then_the_server() -> None:
    hosts = parse(
        """
        server = "https://registry-1.docker.io"

        [host."https://public-mirror.example.com"]
          capabilities = ["pull"]
        [host."https://docker-mirror.internal"]
          capabilities = ["pull", "resolve"]
          ca = "docker-mirror.crt"
        """
    )
    assert [h.url for h in hosts] == [
        HostURL("https", "public-mirror.example.com", "/v2"),
        HostURL("https", "docker-mirror.internal", "/v2"),
        HostURL("https", "registry-1.docker.io", "/v2"),
    ]
    assert [h.capabilities for h in hosts] == [
        Capability.PULL,
        Capability.PULL | Capability.RESOLVE,
        ALL_CAPABILITIES,
    ]
    # A relative path is relative to the hosts.toml.
    assert hosts[1].tls == TLSSettings(ca_files=(HERE / "docker-mirror.crt",))
    assert [h.table for h in hosts] == [
        'host."https://public-mirror.example.com"',
        'host."https://docker-mirror.internal"',
        "",
    ]


def test_without_a_server_the_registry_itself_comes_last_with_the_top_level_settings() -> None:
    hosts = parse(
        """
        ca = "/etc/certs/registry.pem"
        skip_verify = false
        [header]
          x-tenant = "blue"
        [host."http://10.0.0.5:5000"]
        """
    )
    mirror, server = hosts
    assert mirror.url == HostURL("http", "10.0.0.5:5000", "/v2")
    assert mirror.capabilities == ALL_CAPABILITIES  # unset: all three, as in containerd
    assert mirror.tls == TLSSettings()
    assert server.url is None
    assert server.tls == TLSSettings(ca_files=(Path("/etc/certs/registry.pem"),))
    assert server.headers == (("x-tenant", "blue"),)


def test_an_empty_file_is_the_registry_alone() -> None:
    assert parse("") == (RegistryHost(None),)


def test_every_form_of_ca_client_header_and_timeout() -> None:
    hosts = parse(
        """
        [host."https://a.example"]
          ca = ["/etc/certs/one.pem", "two.pem"]
          client = [["/etc/certs/c.cert", "/etc/certs/c.key"], ["both.pem", ""]]
          skip_verify = true
          dial_timeout = "1m30s"
          [host."https://a.example".header]
            x-one = "1"
            x-many = ["a", "b"]
        [host."https://b.example"]
          client = "/etc/certs/client.pem"
          dial_timeout = "250ms"
        [host."https://c.example"]
          client = ["/etc/certs/c1.pem", "/etc/certs/c2.pem"]
        """
    )
    a, b, c, _ = hosts
    assert a.tls == TLSSettings(
        ca_files=(Path("/etc/certs/one.pem"), HERE / "two.pem"),
        client_pairs=(
            (Path("/etc/certs/c.cert"), Path("/etc/certs/c.key")),
            (HERE / "both.pem", None),
        ),
        skip_verify=True,
    )
    assert a.headers == (("x-one", "1"), ("x-many", "a"), ("x-many", "b"))
    assert a.dial_timeout == 90.0
    assert b.tls.client_pairs == ((Path("/etc/certs/client.pem"), None),)
    assert b.dial_timeout == 0.25
    assert c.tls.client_pairs == (
        (Path("/etc/certs/c1.pem"), None),
        (Path("/etc/certs/c2.pem"), None),
    )
    assert a.tls.files == (
        Path("/etc/certs/one.pem"),
        HERE / "two.pem",
        Path("/etc/certs/c.cert"),
        HERE / "both.pem",
        Path("/etc/certs/c.key"),
    )


@pytest.mark.parametrize(
    ("key", "override", "url"),
    [
        ("https://mirror.example", False, HostURL("https", "mirror.example", "/v2")),
        ("https://mirror.example/", False, HostURL("https", "mirror.example", "/v2")),
        ("https://mirror-bak.example/us", False, HostURL("https", "mirror-bak.example", "/us/v2")),
        ("https://m.example/us/v2", False, HostURL("https", "m.example", "/us/v2")),
        ("https://m.example/v2/upstream", True, HostURL("https", "m.example", "/v2/upstream")),
        # No scheme: https, unless the client is told the host speaks plain http.
        ("mirror.example:5000", False, HostURL(None, "mirror.example:5000", "/v2")),
        ("http://[::1]:5000", False, HostURL("http", "[::1]:5000", "/v2")),
    ],
)
def test_host_urls_and_their_api_root(key: str, override: bool, url: HostURL) -> None:
    override_line = "override_path = true" if override else ""
    (mirror, _) = parse(f'[host."{key}"]\n{override_line}\n')
    assert mirror.url == url


def test_keys_it_does_not_know_are_ignored_as_containerd_ignores_them() -> None:
    hosts = parse(
        """
        server = "https://registry.example"
        proxy = "http://proxy:8080"
        some_future_key = [1, 2]
        [host."https://m.example"]
          capabilities = ["PULL"]
          colour = "blue"
        [unrelated]
          x = 1
        """
    )
    assert [h.capabilities for h in hosts] == [Capability.PULL, ALL_CAPABILITIES]


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('server = "https://x"\n[host', "", "not valid TOML"),
        ("ca = 5", ": ca:", "expected a string or a list of strings, not 5"),
        ('ca = ["a.pem", 2]', ": ca:", "expected a string or a list of strings"),
        ('ca = ""', ": ca:", "an empty path"),
        ('skip_verify = "yes"', ": skip_verify:", "expected true or false"),
        ("override_path = 1", ": override_path:", "expected true or false"),
        ("server = 1", ": server:", "expected a URL"),
        ('server = "ftp://x"', ": server:", "is not an http(s) URL"),
        ('dial_timeout = "soon"', ": dial_timeout:", 'a duration such as "1s"'),
        ("header = 3", ": header:", "expected a table"),
        ("[header]\nx = 1", ": header.x:", "expected a string or a list of strings"),
        ('host = "m"', ": host:", 'expected [host."URL"] tables'),
        (
            '[host."https://m"]\ncapabilities = ["pull", "fly"]',
            ': host."https://m".capabilities:',
            "unknown capability 'fly'",
        ),
        (
            '[host."https://m"]\nclient = [["a", "b", "c"]]',
            ': host."https://m".client:',
            "a [certificate, key] pair",
        ),
        ('[host."https://m"]\nclient = 7', ': host."https://m".client:', "a path or a list"),
        ('[host."ftp://m"]', ': host."ftp://m":', "is not an http(s) URL"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    text: str, where: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"{FILE}{where}"), message
    assert problem in message


def test_not_utf8() -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_hosts_file(b"ca = '\xff'", FILE)


def test_a_bad_toml_error_says_where() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('server = "https://x"\nca = [1,,]\nskip_verify = true\n')
    assert "line 2" in str(caught.value)
