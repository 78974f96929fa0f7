"""The dependency index's ``("kind_services", kind)`` key: a proxy that looked gateways up by kind is rebuilt when
a service gains or loses instances of that kind, and not when an unrelated service changes."""

from __future__ import annotations

from dataclasses import replace

from meshcore.catalog.model import Catalog, Node, ServiceInstance, Upstream
from meshcore.compose import build_proxy
from meshcore.controlplane._deps import RecordingSnapshot, change_keys
from meshcore.snapshot import MeshSnapshot, ProxyInfo

NODES = [Node("a1", "10.1.0.1", "dc1"), Node("gw1", "10.1.0.9", "dc1"), Node("b1", "10.2.0.1", "dc2"),
         Node("gw2", "10.2.0.9", "dc2")]
WEB = ServiceInstance("web", "web-a1", "a1", 8080, "10.1.0.1", 21000, datacenter="dc1",
                      upstreams=(Upstream("store", 9000, mesh_gateway="local", mesh_gateway_scope="proxy"),))
STORE = ServiceInstance("store", "store-b1", "b1", 8080, "10.2.0.1", 21000, datacenter="dc2")
OTHER = ServiceInstance("other", "other-b1", "b1", 8081, "10.2.0.1", 21001, datacenter="dc2")


def _gw(name: str, node: str, dc: str, addr: str, kind: str = "mesh-gateway") -> ServiceInstance:
    return ServiceInstance(name, f"{name}-{node}", node, 8443, addr, 8443, kind=kind, datacenter=dc)


def _deps_of(snapshot: MeshSnapshot):
    """What web's sidecar (node a1) reads of ``snapshot`` in a build."""
    view = RecordingSnapshot(snapshot)
    build_proxy(view, ProxyInfo(node="a1", secrets_dir="/s"))  # type: ignore[arg-type]
    return view.deps()


def test_a_service_becoming_a_gateway_reaches_the_sidecars_that_look_gateways_up():
    before = MeshSnapshot.build(Catalog.of(NODES, [WEB, STORE, OTHER, _gw("east", "gw1", "dc1", "10.1.0.9")]))
    deps = _deps_of(before)
    assert ("kind_services", "mesh-gateway") in deps.keys
    # dc2 gets a gateway under a name the sidecar never looked up: the kind key reaches it
    added = Catalog.of(NODES, [*before.catalog.instances, _gw("west", "gw2", "dc2", "10.2.0.9")])
    after, change = before.update(added)
    assert change_keys(change, before, after).reaches(deps)
    # a change of an ordinary service it does not call, same kinds: no rebuild
    moved = Catalog.of(NODES, [replace(i, port=9999) if i.service == "other" else i for i in after.catalog.instances])
    later, change = after.update(moved)
    keys = change_keys(change, after, later)
    assert ("kind_services", "mesh-gateway") not in keys.keys and not keys.reaches(_deps_of(after))

