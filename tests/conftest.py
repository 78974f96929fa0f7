"""Suite-wide options and fixtures."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

pytest_plugins = ["tests.consul_double.pytest_plugin"]

_guard: tuple[subprocess.Popen, int] | None = None


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing")


def pytest_configure(config):
    """Nothing this pytest process starts outlives it, even when it is SIGKILLed: every child inherits
    ``MESHCORE_OWNER=<this run>`` in its environment (and passes it on: Envoy keepers, Envoys, apps), and a
    guard process stops whatever carries it once this process is gone (see meshcore/demo/_guard.py)."""
    global _guard
    from meshcore.demo import _guard as guard

    if _guard is None:
        os.environ[guard.OWNER_VAR] = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        _guard = guard.start_guard(guard.OWNER_VAR, os.environ[guard.OWNER_VAR])


def pytest_unconfigure(config):
    """The run is over: the guard stops what is left (a leak), then exits."""
    global _guard
    if _guard is None:
        return
    proc, fd = _guard
    _guard = None
    os.close(fd)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))
