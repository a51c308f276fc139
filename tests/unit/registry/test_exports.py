"""The public surface changes only on purpose."""

from __future__ import annotations

import lazyimage.registry as registry


def test_exports() -> None:
    assert registry.__all__ == sorted(registry.__all__)
    assert set(registry.__all__) == {
        "CallBound",
        "Challenge",
        "ContentRange",
        "CredentialStore",
        "Credentials",
        "DockerConfigFile",
        "FetchedManifest",
        "Keychain",
        "Reference",
        "RegistryClient",
        "RegistryHosts",
        "ResolvedImage",
        "RetryPolicy",
        "parse_content_range",
        "parse_www_authenticate",
    }
    for name in registry.__all__:
        # The retry policy is lazyimage's one, shared with the Kubernetes watches.
        home = "lazyimage.retry" if name == "RetryPolicy" else "lazyimage.registry._"
        assert getattr(registry, name).__module__.startswith(home)
