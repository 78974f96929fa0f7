"""Suite-wide options and fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.consul_double.pytest_plugin"]


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing")


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))
