"""The engine and VirtualService delegation: a change of a delegate (a VirtualService without hosts, whose own
spec names no host a proxy read) reaches the callers of the roots that delegate to it."""

from __future__ import annotations

from meshcore.resources.loader import load_documents

from ._mesh import generated_catalog
from .test_engine_incremental import _builds, _engine, _full, _rebuilt, _wire


def _resources(location: str) -> list:
    return load_documents(f"""
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: s2-root}}
spec:
  hosts: [s2]
  http:
  - match: [{{uri: {{prefix: /old}}}}]
    delegate: {{name: s2-moves}}
  - route: [{{destination: {{host: s2}}}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: s2-moves}}
spec:
  http:
  - redirect: {{uri: {location}}}
""", "vs.yaml")


def test_a_delegate_change_rebuilds_the_roots_callers_as_a_full_build_would():
    catalog = generated_catalog()
    client = next(n.name for n in catalog.nodes
                  if any("s2" in {u.destination_name for u in i.upstreams} for i in catalog.on_node(n.name)))
    engine = _engine(catalog, _resources("/v1"))
    assert engine.proxies[client].error == ""
    before = _builds(engine)
    engine.resources_changed(_resources("/v2"))
    engine.flush()
    assert client in _rebuilt(before, engine)
    wire, error = _full(engine.snapshot, client)
    assert error == "" and _wire(engine.cache, client) == wire
    assert b"/v2" in b"".join(v for _, packed in wire for _, v in packed)
