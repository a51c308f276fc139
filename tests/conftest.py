"""Test-wide configuration. Fixture modules live in tests/fixtures/, one per component."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.gotools",
    "tests.fixtures.images",
    "tests.fixtures.project_image",
    "tests.fixtures.agent",
    "tests.fixtures.kube",
    "tests.fixtures.operator",
    "tests.fixtures.cluster",
]
