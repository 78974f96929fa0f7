"""The always-present outbound fault filter on a real Envoy 1.40: empty it injects nothing, per route it injects.

Every outbound HTTP connection manager carries ``meshcore.fault`` with an empty ``HTTPFault``; a
VirtualService's fault travels per route (RDS). These tests run Envoy on the outbound listener and route
``build_proxy`` built for reviews v3 (vm3) -> ratings, with a counting test server as the upstream.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from meshcore.catalog.files import FileCatalogSource
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy
from meshcore.xds.generate.policy_filters import FAULT

from ._envoy import CountingServer, OutboundEnvoy

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "bookinfo" / "consul.d"
TRAFFIC = ROOT / "examples" / "traffic"
LISTENER = "outbound:ratings:9093"
FAULT_STATS = "http.outbound_ratings_9093.fault."

DELAY_FOR_JASON = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"""


def _built(text: str) -> dict:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    snap = MeshSnapshot.build(catalog, load_documents(text, "t.yaml") if text else [])
    return build_proxy(snap, ProxyInfo(node="vm3", secrets_dir="/s"))


def _requests(envoy: OutboundEnvoy, n: int, headers: dict | None = None) -> list[tuple[int, float]]:
    """``n`` GETs on one keep-alive connection: (status, seconds) each."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    out = []
    try:
        for i in range(n):
            started = time.monotonic()
            conn.request("GET", f"/ratings/{i}", headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            out.append((resp.status, time.monotonic() - started))
    finally:
        conn.close()
    return out


@pytest.fixture
def app():
    with CountingServer() as server:
        yield server


def test_the_empty_fault_filter_injects_nothing(app, tmp_path):
    with OutboundEnvoy(_built(""), LISTENER, app.port, tmp_path) as envoy:
        assert envoy.http_filters() == [FAULT, "envoy.filters.http.router"]  # loaded and running
        results = _requests(envoy, 50)
        # header-controlled faults are off too: a caller cannot ask the mesh for a fault
        results += _requests(envoy, 10, {"x-envoy-fault-abort-request": "503",
                                         "x-envoy-fault-delay-request": "2000"})
        stats = envoy.stats(FAULT_STATS)
    assert [s for s, _ in results] == [200] * 60
    assert app.hits == 60
    assert stats[FAULT_STATS + "aborts_injected"] == 0 and stats[FAULT_STATS + "delays_injected"] == 0, stats


def test_a_route_fault_replaces_the_empty_listener_config(app, tmp_path):
    with OutboundEnvoy(_built((TRAFFIC / "ratings-abort.yaml").read_text()), LISTENER, app.port, tmp_path) as envoy:
        assert envoy.http_filters() == [FAULT, "envoy.filters.http.router"]
        results = _requests(envoy, 40)
        stats = envoy.stats(FAULT_STATS)
    assert [s for s, _ in results] == [503] * 40  # 100% abort, status 503
    assert app.hits == 0, "an aborted request must not reach the upstream"
    assert stats[FAULT_STATS + "aborts_injected"] == 40, stats


def test_a_fault_applies_to_its_route_only(app, tmp_path):
    with OutboundEnvoy(_built(DELAY_FOR_JASON), LISTENER, app.port, tmp_path) as envoy:
        others = _requests(envoy, 20)
        jason = _requests(envoy, 5, {"end-user": "jason"})
        stats = envoy.stats(FAULT_STATS)
    assert [s for s, _ in others + jason] == [200] * 25
    assert all(took >= 0.25 for _, took in jason), jason  # each held for the 300ms delay (timers round a little)
    assert stats[FAULT_STATS + "delays_injected"] == 5, stats  # ... and only those
    assert app.hits == 25
