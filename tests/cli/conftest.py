"""Fixtures of the meshctl tests: a real control plane on the bookinfo catalog (one per test module that asks)."""

from __future__ import annotations

import pytest

from ._helpers import BOOKINFO, control_plane, wait_for_catalog


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with control_plane(tmp_path_factory.mktemp("cp"), BOOKINFO) as cp:
        wait_for_catalog(cp)
        yield cp


@pytest.fixture
def server(plane, monkeypatch) -> str:
    """The control plane's HTTP API URL, with meshctl pointed at its bootstrap admin token."""
    monkeypatch.setenv("MESHCORE_TOKEN_FILE", str(plane.settings.state_dir / "admin.token"))
    return plane.addresses["http"]
