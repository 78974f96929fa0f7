"""``localityLbSetting.failoverPriority``: endpoint priorities by label per calling proxy, with and without
``failover``, validation with field paths, mesh gateways, Envoy.

The catalog of :mod:`tests.traffic.test_locality`: ``api`` on a1 (dc1 zone a, version v1), a2 (dc1 zone b, v2),
b1 (dc2, v1), c1 (dc3, v2); ``web`` calls it from a1 and b1.
"""

from __future__ import annotations

import json

import pytest

from meshcore.catalog.files import FileCatalogSource
from meshcore.catalog.model import Catalog
from meshcore.policies.destination_rule.failover_priority import label_rank
from meshcore.xds.generate import ENDPOINT

from .test_locality import _build, _errors, _priorities, _rule, _write_catalog, envoy_validates

BASE = "spec.trafficPolicy.loadBalancer.localityLbSetting"


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return _write_catalog(tmp_path / "consul.d")


def _priority(labels: str, failover: str = "") -> str:
    return _rule(f"""    loadBalancer:
      localityLbSetting:
        failoverPriority: {labels}{failover}""")


def test_label_rank_counts_leading_matches_only():
    caller = {"a": "1", "b": "2", "c": "3"}
    assert label_rank(caller, {"a": "1", "b": "2", "c": "3"}, ["a", "b", "c"]) == 0
    assert label_rank(caller, {"a": "1", "b": "x", "c": "3"}, ["a", "b", "c"]) == 2  # c does not count after b
    assert label_rank(caller, {"b": "2"}, ["a", "b"]) == 2
    assert label_rank(caller, {"a": "9"}, ["a=9", "b"]) == 1  # key=value ignores the caller's value
    assert label_rank({}, {}, ["x"]) == 0  # missing on both sides compares equal, as Istio's


def test_topology_labels_are_the_datacenter_and_zone_per_caller(catalog):
    text = _priority("[topology.kubernetes.io/region, topology.kubernetes.io/zone]")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/a"], "P1": ["dc1/b"], "P2": ["dc2", "dc3"]}
    assert _priorities(_build(catalog, text, "b1")) == {"P0": ["dc2"], "P1": ["dc1/a", "dc1/b", "dc3"]}


def test_network_is_the_datacenter_too(catalog):
    assert _priorities(_build(catalog, _priority("[topology.istio.io/network]"), "b1")) == {
        "P0": ["dc2"], "P1": ["dc1/a", "dc1/b", "dc3"]}


def test_a_label_with_a_value_ranks_endpoints_whatever_the_caller(catalog):
    assert _priorities(_build(catalog, _priority("[version=v2]"), "a1")) == {
        "P0": ["dc1/b", "dc3"], "P1": ["dc1/a", "dc2"]}


def test_a_label_key_compares_the_callers_instance_labels(tmp_path):
    root = tmp_path / "consul.d"
    _write_catalog(root)
    web = json.loads((root / "a1" / "web.json").read_text())
    web["service"]["meta"] = {"version": "v2"}
    (root / "a1" / "web.json").write_text(json.dumps(web))
    catalog = FileCatalogSource(root).poll(None, 0).catalog
    text = _priority("[version, topology.kubernetes.io/region]")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/b"], "P1": ["dc3"], "P2": ["dc1/a", "dc2"]}
    # web on b1 has no version: no endpoint shares it, and the region after it does not count: all at P0
    assert _priorities(_build(catalog, text, "b1")) == {"P0": ["dc1/a", "dc1/b", "dc2", "dc3"]}


def test_with_failover_labels_come_first_then_the_locality_order(catalog):
    text = _priority("[version=v1]", "\n        failover: [{from: dc1, to: dc3}]")
    assert _priorities(_build(catalog, text, "a1")) == {"P0": ["dc1/a"], "P1": ["dc2"], "P2": ["dc1/b"], "P3": ["dc3"]}


def test_one_locality_may_be_split_over_priorities(catalog, tmp_path):
    root = tmp_path / "two"
    _write_catalog(root, api_on=("a1", "a2", "b1", "c1"))
    svc = {"name": "api", "id": "api-a1-b", "port": 8081, "meta": {"version": "v2"},
           "connect": {"sidecar_service": {"port": 21002}}}
    (root / "a1" / "api2.json").write_text(json.dumps({"service": svc}))
    built = _build(FileCatalogSource(root).poll(None, 0).catalog, _priority("[version=v1]"), "a1")
    assert _priorities(built) == {"P0": ["dc1/a", "dc2"], "P1": ["dc1/a", "dc1/b", "dc3"]}


def test_failover_priority_is_checked_with_field_paths():
    fields = dict(_errors(_priority("[topology.istio.io/subzone, version, version, 'a b']")))
    assert set(fields) == {f"{BASE}.failoverPriority[0]", f"{BASE}.failoverPriority[2]", f"{BASE}.failoverPriority[3]"}
    assert "no subzone" in fields[f"{BASE}.failoverPriority[0]"]


def test_topology_labels_are_refused_with_failover_and_distribute_is_exclusive():
    fields = dict(_errors(_priority("[version, topology.kubernetes.io/zone]",
                                    "\n        failover: [{from: dc1, to: dc3}]")))
    assert set(fields) == {f"{BASE}.failoverPriority[1]"}
    assert "cannot be combined with failover" in fields[f"{BASE}.failoverPriority[1]"]
    fields = dict(_errors(_priority("[version]", "\n        distribute: [{from: dc1, to: {dc1: 100}}]")))
    assert set(fields) == {f"{BASE}.failoverPriority"}


def test_a_remote_datacenters_gateways_rank_by_their_datacenter(tmp_path):
    from tests.xds.test_mesh_gateway import _build as build_gw, _snapshot, _write

    root = tmp_path / "consul.d"
    _write(root, "local")
    built = build_gw(_snapshot(root, _priority("[topology.kubernetes.io/region]")), "a1")
    [cla] = [c for c in built[ENDPOINT] if c.cluster_name == "outbound:api"]
    got = [(g.priority, g.locality.region, [e.endpoint.address.socket_address.address for e in g.lb_endpoints])
           for g in cla.endpoints]
    assert got == [(0, "dc1", ["10.1.0.2"]), (1, "dc2", ["10.1.0.9"])]


def test_envoy_accepts_label_priorities_with_subsets(catalog, tmp_path):
    text = _priority("[version=v1]", "\n        failover: [{from: dc1, to: dc3}]") + \
        "\n  subsets:\n  - {name: v2, labels: {version: v2}}\n"
    built = _build(catalog, text, "a1", secrets=str(tmp_path))
    assert len({g.priority for cla in built[ENDPOINT] for g in cla.endpoints}) > 2
    envoy_validates(built, tmp_path)
