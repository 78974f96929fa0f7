"""End to end: faults under steady traffic through the ingress, with real Envoys. None may fail a request.

The mesh is the bookinfo sample with a second instance of every service that has one (productpage on n2,
details on n3, ratings on n1), so that losing one VM's proxy leaves every service an instance. Two client
threads call the ingress (productpage -> details, reviews -> ratings) without pause while a fault is
applied and repaired; every answer must be a full page.
"""

from __future__ import annotations

import signal

import pytest

from ._topology import running_mesh, service
from ._traffic import SteadyTraffic


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("faults-mesh")
    extra = [service("productpage", "productpage-v1b", "n2", "v1", ["details", "reviews"]),
             service("details", "details-v1b", "n3", "v1"),
             service("ratings", "ratings-v1b", "n1", "v1")]
    with running_mesh(state, artifacts="e2e-faults-logs", extra=extra, agent_refresh="2s") as m:
        yield m


def _report(name: str, traffic: SteadyTraffic) -> None:
    print(f"{name}: {traffic.ok} requests ok, {len(traffic.failed)} failed {traffic.failed[:5]}")


def test_control_plane_sigkill_loses_no_request(mesh):
    """The control plane dies without warning and comes back (same state directory): Envoys keep serving
    their last config meanwhile, agents reconnect with their node certificates, nothing is re-joined."""
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        assert mesh.stop("controlplane", sig=signal.SIGKILL)
        traffic.wait_for(50)
        mesh.start_control_plane()
        mesh.wait_synced(timeout=90)
        traffic.wait_for(50)
    _report("control plane SIGKILL", traffic)
    assert traffic.failed == []


def test_agent_sigkill_loses_no_request(mesh):
    """An agent dies without warning: its Envoy (in a session of its own) keeps serving; the restarted agent
    takes that Envoy over and the proxy is synced again."""
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        assert mesh.stop("agent-n2", sig=signal.SIGKILL)
        traffic.wait_for(50)
        mesh.start_agent("n2")
        mesh.wait_synced(timeout=90)
        traffic.wait_for(50)
    _report("agent SIGKILL", traffic)
    assert traffic.failed == []
