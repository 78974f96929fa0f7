"""End to end (issue 12, finding 10): the control plane is down longer than the node certificates'
remaining life, under steady traffic; when it comes back every agent recovers its node certificate by
itself (no join token, no human), Envoy reconnects to ADS, and not one request fails.

Its own mesh (the bookinfo topology on free ports) with 20-second node certificates (workload leaves
live an hour: the data plane does not depend on the node certificate).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from meshcore.agent.identity import CertSummary
from meshcore.demo.launcher import wait_until

from ._topology import NODES, running_mesh
from ._traffic import SteadyTraffic
from .test_ca_rotation import _get

NODE_CERT_TTL = 20.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("node-recovery-mesh"), leaf_ttl="1h", agent_refresh="1s",
                      env={"MESHCORE_NODE_CERT_TTL": f"{NODE_CERT_TTL:g}s"}) as m:
        yield m


def _node_cert(mesh, node: str) -> CertSummary:
    return CertSummary.of((mesh.state / "nodes" / node / "node.crt").read_text())


def _status(mesh, node: str) -> dict:
    try:
        return json.loads((mesh.state / "nodes" / node / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_node_certificates_expire_during_an_outage_and_recover_by_themselves(mesh):
    with SteadyTraffic(mesh.url) as traffic:
        time.sleep(1)
        mesh.stop("controlplane")  # the outage
        down_at = time.monotonic()
        before = {node: _node_cert(mesh, node) for node in NODES}
        latest = max(c.not_after for c in before.values())
        wait_until(lambda: datetime.now(timezone.utc) > latest, 3 * NODE_CERT_TTL, "every node certificate to expire")
        # the agents say so: ERROR in the log, certificate_alarms and 'degraded' in status.json
        wait_until(lambda: all(any("node certificate" in a and "expired" in a
                                   for a in _status(mesh, n).get("certificate_alarms", [])) for n in NODES),
                   30, "every agent to report its expired node certificate")
        assert all(_status(mesh, n)["state"] == "degraded" for n in NODES)
        outage = time.monotonic() - down_at

        mesh.start_control_plane()  # the outage ends: same ports, same state
        back_at = time.monotonic()
        wait_until(lambda: all(_node_cert(mesh, n).not_after > datetime.now(timezone.utc) for n in NODES), 120,
                   "every agent to recover its node certificate")
        recovered_in = time.monotonic() - back_at
        wait_until(lambda: all(not _status(mesh, n).get("certificate_alarms") for n in NODES), 60,
                   "the alarms to clear")
        # Envoy is back on ADS with the recovered certificate: every proxy synced again
        wait_until(lambda: all(p.get("synced") for p in _get(mesh, "/v1/proxies")) and
                   {p["node"] for p in _get(mesh, "/v1/proxies")} >= set(NODES), 60, "every proxy to sync again")
        time.sleep(2)
    print(f"node recovery: outage {outage:.1f}s (node certificates of {NODE_CERT_TTL:g}s), recovered "
          f"{recovered_in:.1f}s after the control plane came back; {traffic.ok} requests ok, "
          f"{len(traffic.failed)} failed")
    for node in NODES:
        after = _node_cert(mesh, node)
        assert after.serial != before[node].serial
        log = (mesh.state / "logs" / f"agent-{node}.log").read_text()
        assert "node certificate recovered without a join token" in log
        assert "EXPIRED" in log
    assert traffic.failed == []
    assert traffic.ok > 100
