"""A change only the policy plugins read re-runs the plugins on the kept generator output, not the generators."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshcore.catalog.model import Catalog, CatalogUpdate
from meshcore.policies import registry
from meshcore.resources.loader import load_documents
from meshcore.xds import generate

from ._mesh import generated_catalog
from .test_engine_incremental import _agent_default_secrets, _engine, _full, _per_node_secrets, _wire

GENERATORS = ("build_listeners", "build_routes", "build_clusters", "build_endpoints")


def _mesh_wide(methods: list[str]) -> list:
    quoted = ", ".join(f'"{m}"' for m in methods)
    return load_documents(f"""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide, namespace: meshcore-system}}
spec:
  rules:
  - to:
    - operation:
        methods: [{quoted}]
""", "mesh-wide.yaml")


def _destination_rule(host: str, lb: str) -> list:
    return load_documents(f"""
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: {host}
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
""", "dr.yaml")


@pytest.fixture
def calls(monkeypatch):
    """Counts calls of every generator and every policy plugin (by name)."""
    counted: dict[str, int] = {}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counted[name] = counted.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for name in GENERATORS:
        monkeypatch.setattr(generate, name, counting(name, getattr(generate, name)))
    monkeypatch.setattr(registry, "PLUGINS", tuple((kind, counting(kind, fn)) for kind, fn in registry.PLUGINS))
    return counted


@pytest.mark.parametrize("secrets", [_per_node_secrets, _agent_default_secrets], ids=["per-node", "agent-default"])
def test_a_mesh_wide_policy_change_re_runs_the_plugins_not_the_generators(calls, secrets):
    catalog = generated_catalog()
    engine = _engine(catalog, _mesh_wide(["GET"]), secrets=secrets)
    proxies = len(engine.proxies)
    assert all(calls[g] == proxies for g in GENERATORS)  # the first build generates every proxy
    m = engine.metrics
    assert m is not None
    builds, reruns = m.proxy_builds._value.get(), m.proxy_policy_reruns._value.get()
    for methods in (["GET", "POST"], ["PUT"], ["GET"]):
        calls.clear()
        engine.resources_changed(_mesh_wide(methods))
        assert engine.flush()
        assert not any(calls.get(g) for g in GENERATORS), calls  # no generator ran
        steps = sum(1 for kind, _fn in registry.PLUGINS if kind == "AuthorizationPolicy")  # sidecars', gateways'
        assert calls["AuthorizationPolicy"] == steps * proxies and calls["Telemetry"] == proxies  # every plugin did
        assert engine.snapshot is not None
        for node in engine.proxies:
            wire, error = _full(engine.snapshot, node, secrets)
            assert not error and _wire(engine.cache, node) == wire, node  # byte-identical to a full build
    assert m.proxy_builds._value.get() == builds
    assert m.proxy_policy_reruns._value.get() == reruns + 3 * proxies


def test_a_generator_read_after_plugin_only_changes_still_regenerates(calls):
    """After plugin-only changes, a change the generators read (an instance's port) regenerates the
    proxies it reaches from the current snapshot: the kept output is never reused past its reads."""
    catalog = generated_catalog()
    host = catalog.service_names()[0]
    engine = _engine(catalog, _mesh_wide(["GET"]) + _destination_rule(host, "RANDOM"))
    engine.resources_changed(_mesh_wide(["POST"]) + _destination_rule(host, "LEAST_REQUEST"))
    assert engine.flush()
    calls.clear()
    moved = catalog.instances_of(host)[0]
    changed = Catalog.of(catalog.nodes, [replace(i, port=i.port + 1) if i == moved else i for i in catalog.instances])
    engine.catalog_changed(CatalogUpdate(changed, 2))
    assert engine.flush()
    assert calls.get("build_listeners", 0) >= 1  # the instance's own proxy was regenerated
    assert engine.snapshot is not None
    for node in engine.proxies:
        wire, error = _full(engine.snapshot, node)
        assert _wire(engine.cache, node) == wire and not error, node
