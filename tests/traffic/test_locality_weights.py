"""``localityLbSetting.distribute``: locality weights per calling proxy, validation with field paths, Envoy.

The catalog of :mod:`tests.traffic.test_locality`: ``api`` in dc1 (zones a and b), dc2 and dc3; ``web`` calls it
from dc1 zone a (node a1) and from dc2 (node b1).
"""

from __future__ import annotations

import pytest
from meshcore import naming
from meshcore.catalog.model import Catalog
from meshcore.policies.destination_rule.locality_weights import group_weights, locality_matches
from meshcore.xds.generate import CLUSTER, ENDPOINT
from meshcore.xds.generate.endpoints import Locality

from .test_locality import _build, _errors, _rule, _write_catalog, envoy_validates


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return _write_catalog(tmp_path / "consul.d")


DISTRIBUTE = _rule("""    loadBalancer:
      localityLbSetting:
        distribute:
        - from: dc1/*
          to: {"dc1/*": 80, "dc3/*": 20}
        - from: "*"
          to: {dc2: 50, dc1/b: 25, dc1: 25}""")


def _weights(built: dict, name: str = "outbound:api") -> dict[str, tuple[int, int]]:
    """``{"dc1/a": (priority, weight)}`` of one built assignment."""
    [cla] = [c for c in built[ENDPOINT] if c.cluster_name == name]
    return {(f"{g.locality.region}/{g.locality.zone}" if g.locality.zone else g.locality.region):
            (g.priority, g.load_balancing_weight.value) for g in cla.endpoints}


def _weighted(built: dict, name: str) -> bool:
    [cluster] = [c for c in built[CLUSTER] if c.name == name]
    return cluster.common_lb_config.HasField("locality_weighted_lb_config")


def test_patterns_match_datacenter_zone_and_wildcards():
    a = Locality("dc1", "a")
    assert [locality_matches(p, a) for p in ("*", "dc1", "dc1/*", "dc1/a", "dc1/a/*", "dc1/b", "dc2/*")] == [
        True, True, True, True, True, False, False]
    assert locality_matches("dc2", Locality("dc2")) and not locality_matches("dc2/a", Locality("dc2"))


def test_a_wildcard_weight_is_split_by_endpoint_counts_and_specific_patterns_claim_first():
    locs = [(Locality("dc1", "a"), 1), (Locality("dc1", "b"), 3), (Locality("dc2"), 2), (Locality("dc3"), 2)]
    assert group_weights(locs, (("dc1/*", 80), ("dc2", 20))) == [20, 60, 20, 0]
    assert group_weights(locs, (("dc1/*", 50), ("dc1/a", 50))) == [50, 50, 0, 0]
    assert group_weights(locs, (("*", 10), ("dc1/a", 90))) == [90, 5, 3, 3]


def test_a_caller_in_dc1_gets_its_entry_and_unnamed_localities_get_no_traffic(catalog):
    built = _build(catalog, DISTRIBUTE, "a1")
    assert _weights(built) == {"dc1/a": (0, 40), "dc1/b": (0, 40), "dc3": (0, 20)}
    assert _weighted(built, naming.upstream_cluster("api", "web"))


def test_the_same_rule_weighs_differently_for_a_caller_in_dc2(catalog):
    assert _weights(_build(catalog, DISTRIBUTE, "b1")) == {"dc1/a": (0, 25), "dc1/b": (0, 25), "dc2": (0, 50)}


def test_a_caller_no_from_matches_balances_by_endpoint_counts(catalog):
    text = _rule("""    loadBalancer:
      localityLbSetting:
        distribute: [{from: dc3, to: {dc3: 100}}]""")
    built = _build(catalog, text, "a1")
    assert _weights(built) == {"dc1/a": (0, 1), "dc1/b": (0, 1), "dc2": (0, 1), "dc3": (0, 1)}
    assert _weighted(built, naming.upstream_cluster("api", "web"))


def test_distribute_replaces_locality_priorities_even_with_outlier_detection(catalog):
    text = DISTRIBUTE + "\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5s}"
    assert {p for p, _ in _weights(_build(catalog, text, "a1")).values()} == {0}


def test_enabled_false_turns_distribute_off(catalog):
    text = DISTRIBUTE.replace("localityLbSetting:", "localityLbSetting:\n        enabled: false")
    built = _build(catalog, text, "a1")
    assert _weights(built) == {"dc1/a": (0, 0), "dc1/b": (0, 0), "dc2": (0, 0), "dc3": (0, 0)}
    assert not _weighted(built, naming.upstream_cluster("api", "web"))


def test_a_subset_gets_its_own_weights(catalog):
    subsets = """  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        zoneAwareLbSetting:
          distribute: [{from: "*", to: {dc2: 100}}]
"""
    built = _build(catalog, _rule("    loadBalancer: {simple: RANDOM}", subsets), "a1")
    assert _weights(built, naming.subset_endpoints("api", "v1", None)) == {"dc2": (0, 100)}
    assert _weighted(built, naming.subset_cluster("api", "web", "v1"))
    assert not _weighted(built, naming.upstream_cluster("api", "web"))


def test_weights_and_localities_are_checked_with_field_paths():
    text = _rule("""    loadBalancer:
      localityLbSetting:
        distribute:
        - {from: dc1/*, to: {"dc1/*": 70, "dc2/*": 20}}
        - {from: "*/a", to: {"dc2/a/b": 50, "dc3": 0, "dc4": 50}}""")
    base = "spec.trafficPolicy.loadBalancer.localityLbSetting"
    fields = dict(_errors(text))
    assert set(fields) == {f"{base}.distribute[0].to", f"{base}.distribute[1].from",
                           f'{base}.distribute[1].to["dc2/a/b"]', f'{base}.distribute[1].to["dc3"]'}
    assert "sum to 100 (got 90" in fields[f"{base}.distribute[0].to"]
    assert "locality <datacenter>[/<zone>]" in fields[f"{base}.distribute[1].from"]
    assert "weight 1-100" in fields[f'{base}.distribute[1].to["dc3"]']


def test_one_entry_per_from_and_not_with_failover_as_in_istio():
    text = _rule("""    loadBalancer:
      localityLbSetting:
        distribute:
        - {from: dc1/*, to: {"dc1/*": 80, "dc2/*": 20}}
        - {from: dc1/*, to: {"dc2": 100}}
        failover: [{from: dc1, to: dc2}]""")
    base = "spec.trafficPolicy.loadBalancer.localityLbSetting"
    fields = dict(_errors(text))
    assert set(fields) == {f"{base}.distribute", f"{base}.distribute[1].from"}
    assert "cannot both be set" in fields[f"{base}.distribute"]
    assert "one entry per 'from'" in fields[f"{base}.distribute[1].from"]


def test_envoy_accepts_the_weighted_config_with_failover_targets(catalog, tmp_path):
    text = DISTRIBUTE + """
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  failover:
  - subset: v1
    targets: [{subset: v2}]
"""
    built = _build(catalog, text, "a1", secrets=str(tmp_path))
    [v1] = [c for c in built[ENDPOINT] if c.cluster_name == naming.subset_endpoints("api", "v1", None)]
    assert all(g.load_balancing_weight.value > 0 for g in v1.endpoints) and {g.priority for g in v1.endpoints} == {0, 1}
    envoy_validates(built, tmp_path)


def test_a_remote_datacenters_weight_goes_to_its_mesh_gateways(tmp_path):
    from tests.xds.test_mesh_gateway import _build as build_gw, _snapshot, _write

    root = tmp_path / "consul.d"
    _write(root, "local")
    text = _rule("""    loadBalancer:
      localityLbSetting:
        distribute: [{from: dc1, to: {dc1: 70, dc2: 30}}]""")
    built = build_gw(_snapshot(root, text), "a1")
    [cla] = [c for c in built[ENDPOINT] if c.cluster_name == "outbound:api"]
    got = {g.locality.region: (g.load_balancing_weight.value, [e.endpoint.address.socket_address.address
                                                               for e in g.lb_endpoints]) for g in cla.endpoints}
    assert got == {"dc1": (70, ["10.1.0.2"]), "dc2": (30, ["10.1.0.9"])}  # dc2 through the local gateway gw1
    assert _weighted(built, naming.upstream_cluster("api", "web"))


def test_a_service_entry_hosts_inline_endpoints_are_weighed_too():
    from pathlib import Path

    from meshcore.compose import build_proxy
    from meshcore.snapshot import ProxyInfo
    from tests.xds.test_build_golden import _snapshot

    text = (Path(__file__).parents[2] / "meshcore" / "policies" / "service_entry" / "testdata"
            / "vm1-egress-tls-allow-any.input.yaml").read_text()
    text = text.replace("trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}", """trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute: [{from: "*", to: {"us-east/us-east-1a": 100}}]""")
    built = build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir="/s"))
    [cluster] = [c for c in built[CLUSTER] if c.name == naming.egress_cluster("api.payments.example", 443)]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    assert [(g.locality.zone, g.load_balancing_weight.value) for g in cluster.load_assignment.endpoints] == [
        ("us-east-1a", 100)]
