"""Locality failover through the incremental engine: the own datacenter emptied and recovered.

With two datacenters, while the caller's own one has no healthy instance the ranking leaves the one group
left where it is; the engine must still count that assignment as the proxy's own, so the recovery re-runs
the ranking (found by tests/e2e/test_multi_dc.py: traffic split 50/50 over dc1 and dc2 after a recovery).
"""

from __future__ import annotations

from meshcore.catalog.model import Catalog, CatalogUpdate, Node, ServiceInstance, Upstream
from meshcore.resources.loader import load_documents

from tests.xds.test_mesh_gateway import FAILOVER as RULE  # api: dc1 fails over to dc2

from .test_engine_incremental import _engine, _full, _wire



def _inst(service: str, node: str, dc: str, healthy: bool = True, upstreams=()) -> ServiceInstance:
    return ServiceInstance(service=service, id=f"{service}-{node}", node=node, port=8080, mesh_address=f"10.0.{node[-1]}.1",
                           mesh_port=21000, healthy=healthy, datacenter=dc, upstreams=upstreams)


def _catalog(dc1_api_healthy: bool) -> Catalog:
    nodes = [Node("vm0", "10.0.0.1", "dc1"), Node("vm1", "10.0.1.1", "dc1"), Node("vm2", "10.0.2.1", "dc2")]
    return Catalog.of(nodes, [_inst("web", "vm0", "dc1", upstreams=(Upstream("api", 9000),)),
                              _inst("api", "vm1", "dc1", healthy=dc1_api_healthy), _inst("api", "vm2", "dc2")])


def test_recovery_of_the_own_datacenter_re_ranks_the_callers_assignment():
    resources = load_documents(RULE, "rule.yaml")
    engine = _engine(_catalog(True), resources)
    try:
        for step, healthy in enumerate((False, True, False, True), start=2):
            engine.catalog_changed(CatalogUpdate(_catalog(healthy), step))
            assert engine.flush()
            snap = engine.snapshot
            assert _wire(engine.cache, "vm0") == _full(snap, "vm0")[0], f"step {step}: dc1 healthy={healthy}"
    finally:
        engine.stop()
