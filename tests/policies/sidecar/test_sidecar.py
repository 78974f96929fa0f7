"""Sidecar: validation, which Sidecar applies to a workload, scoping of upstreams and the egress listeners (pure)."""

from __future__ import annotations

import pytest

from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.resources import load_documents
from meshcore.resources.loader import validate_set
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, LISTENER, ROUTE
from meshcore.xds.generate.sidecar_scope import host_matches
from meshcore.xds.validate import validate_snapshot
from tests.xds.test_build_golden import _snapshot

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: Sidecar\nmetadata: {name: s}\n"


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + "spec: " + spec + "\n", "s.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_refusals_say_why():
    errs = _errors("{ingress: [{port: {number: 80, protocol: HTTP, name: h}}], egress: [{hosts: [details], "
                   "captureMode: IPTABLES}, {hosts: ['*/*'], port: {number: 5432, protocol: TCP}}]}")
    assert not [p for p in errs if p.startswith("spec.ingress")]  # accepted: see test_ingress.py
    assert 'write <namespace>/<host> as Istio does, e.g. "./details"' in errs["spec.egress[0].hosts[0]"]
    assert "no traffic capture" in errs["spec.egress[0].captureMode"]
    assert "routes HTTP by Host and TLS by SNI" in errs["spec.egress[1].port.protocol"]


def test_one_namespace_wide_sidecar_per_namespace():
    docs = load_documents(HEAD + "spec: {}\n---\n" + HEAD.replace("name: s", "name: t") + "spec: {}\n", "s.yaml")
    [err] = validate_set(docs)
    assert err.source == "Sidecar/default/t" and "already applies to all of namespace default" in err.message


@pytest.mark.parametrize("pattern, host, namespace, expected", [
    ("*/*", "x", "a", True), ("./*", "x", "default", True), ("./*", "x", "other", False),
    ("~/*", "x", "default", False), ("other/x", "x", "other", True), ("*/*.example.com", "api.example.com", "d", True),
    ("*/*.example.com", "example.com", "d", False), ("*/details", "reviews", "default", False),
])
def test_host_patterns(pattern, host, namespace, expected):
    assert host_matches(pattern, "default", host, namespace) is expected


MESH_WIDE = """apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {name: default, namespace: meshcore-system}
spec:
  egress: [{hosts: ["./nothing"]}]
"""


def _built(text: str, node: str = "vm1") -> dict:
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    assert validate_snapshot(node, built) == []
    return built


def test_mesh_wide_sidecar_scopes_every_proxy_and_a_selector_wins():
    """The root namespace's Sidecar (no selector) applies where no other does; productpage's own Sidecar wins."""
    assert not [l.name for l in _built(MESH_WIDE, "vm2")[LISTENER] if l.name.startswith("outbound:")]
    own = MESH_WIDE + "---\n" + HEAD.replace("name: s", "name: pp") + \
        "spec: {workloadSelector: {labels: {app: productpage}}, egress: [{hosts: ['*/reviews']}]}\n"
    built = _built(own)
    assert [l.name for l in built[LISTENER] if l.name.startswith("outbound:")] == ["outbound:reviews:9092"]
    assert not [cl.name for cl in built[CLUSTER] if cl.name.startswith("outbound:details")]
    assert not [r.name for r in built[ROUTE] if r.name.startswith("outbound:details")]


def test_a_route_to_a_host_outside_the_sidecar_refuses_the_config():
    text = HEAD + "spec: {workloadSelector: {labels: {app: productpage}}, egress: [{hosts: ['./reviews']}]}\n---\n" + \
        "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\n" + \
        "spec: {hosts: [reviews], http: [{route: [{destination: {host: details}}]}]}\n"
    with pytest.raises(SnapshotInvalid, match="not among the egress hosts of the Sidecar"):
        build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir="/s"))


def test_two_sidecars_on_one_proxy_cannot_share_an_egress_port():
    text = "".join(HEAD.replace("name: s", f"name: {app}") + f"spec: {{workloadSelector: {{labels: {{app: {app}}}}}, "
                   "egress: [{hosts: ['*/*'], port: {number: 15080, protocol: HTTP}}]}\n---\n"
                   for app in ("productpage", "reviews"))
    with pytest.raises(SnapshotInvalid, match="both declare an egress listener on 127.0.0.1:15080"):
        build_proxy(_snapshot(text.rstrip("-\n")), ProxyInfo(node="vm1", secrets_dir="/s"))


def test_the_docs_example_loads_and_builds():
    """docs/traffic.md's egress example: valid as a set, and a config vm1's Envoy gets (productpage's Sidecar)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "traffic.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: ServiceEntry" in b and "kind: Sidecar" in b]
    assert validate_set(load_documents(block, "docs/traffic.md")) == []
    built = _built(block)
    names = {l.name for l in built[LISTENER]}
    assert {"egress:127.0.0.1:15080", "egress:127.0.0.1:15443"} <= names


def test_the_engine_picks_up_sidecar_and_service_entry_changes_without_a_full_rebuild():
    """Through the engine's incremental path (its dependency index, no engine change for these kinds): after each
    change every proxy's published config equals a full rebuild's."""
    from meshcore.controlplane.engine import MeshEngine  # noqa: F401 (the engine under test)
    from tests.controlplane._mesh import generated_catalog
    from tests.controlplane.test_engine_incremental import _engine, _full, _wire

    catalog = generated_catalog()
    client = next(n.name for n in catalog.nodes if any(i.upstreams for i in catalog.on_node(n.name)))
    engine = _engine(catalog)
    scoped = load_documents(MESH_WIDE, "s.yaml")
    entry = load_documents("""apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: ext}
spec: {hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
""", "se.yaml")
    egress = load_documents(MESH_WIDE.replace('egress: [{hosts: ["./nothing"]}]',
                                              'egress: [{hosts: ["*/*"], port: {number: 15080, protocol: HTTP}}]'),
                            "s.yaml")
    for resources in (scoped, scoped + entry, egress + entry, entry, []):
        engine.resources_changed(list(resources))
        assert engine.flush()
        for node in (n.name for n in catalog.nodes):
            assert _wire(engine.cache, node) == _full(engine.snapshot, node)[0], node
    assert engine.proxies[client].error == ""
