"""Resolver failover to another subset or service: compiled to DestinationRule ``failover``, generated as lower
endpoint priorities of one cluster (the golden case ``failover-reviews`` shows the whole proxy)."""

from __future__ import annotations

import dataclasses

import pytest

from meshcore.compose import build_proxy
from meshcore.errors import ValidationError
from meshcore.consul_entries import CatalogFacts, CompileOptions, compile_entries, entry_of
from meshcore.policies.destination_rule.failover import OVERPROVISIONING_FACTOR
from meshcore.resources.loader import load_documents
from meshcore.resources.loader import validate_set
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds.generate import ENDPOINT

from .test_golden import catalog

RESOLVER = {"Kind": "service-resolver", "Name": "reviews", "DefaultSubset": "v1", "Subsets": {
    "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
    "Failover": {"v1": {"ServiceSubset": "v2"}}}


def _compile(*bodies):
    cat = catalog()
    return compile_entries([entry_of(b, "test") for b in bodies], CompileOptions(catalog=CatalogFacts.of(cat)))


def _priorities(cat, resources, name):
    built = build_proxy(MeshSnapshot.build(cat, list(resources)), ProxyInfo(node="vm1", secrets_dir="/s"))
    (cla,) = [a for a in built[ENDPOINT] if a.cluster_name == name]
    versions = {(i.mesh_address, i.mesh_port): dict(i.meta).get("version") for i in cat.instances}
    return cla, [(g.priority, sorted(versions[(e.endpoint.address.socket_address.address,
                                               e.endpoint.address.socket_address.port_value)]
                                     for e in g.lb_endpoints)) for g in cla.endpoints]


def test_subset_failover_is_a_lower_priority_of_the_same_cluster():
    result = _compile(RESOLVER)
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule"]
    assert dr.spec["failover"] == [{"subset": "v1", "targets": [{"subset": "v2"}]}]
    cla, prios = _priorities(catalog(), result.resources, "outbound:reviews|v1")
    assert prios == [(0, ["v1"]), (1, ["v2"])]
    assert cla.policy.overprovisioning_factor.value == OVERPROVISIONING_FACTOR  # all-or-nothing, as Consul


def test_first_target_without_healthy_instance_makes_the_failover_priority_0_and_back():
    result = _compile(RESOLVER)
    cat = catalog()
    down = dataclasses.replace(cat, instances=tuple(
        dataclasses.replace(i, healthy=False) if dict(i.meta).get("version") == "v1" else i for i in cat.instances))
    assert _priorities(down, result.resources, "outbound:reviews|v1")[1] == [(0, ["v2"])]
    assert _priorities(cat, result.resources, "outbound:reviews|v1")[1] == [(0, ["v1"]), (1, ["v2"])]


def test_service_failover_accepts_the_target_identity_and_targets_resolve():
    result = _compile({**RESOLVER, "Failover": {"*": {"Targets": [{"Service": "ratings"}, {"ServiceSubset": "v2"}]}}},
                      {"Kind": "service-resolver", "Name": "ratings", "DefaultSubset": "blue",
                       "Subsets": {"blue": {"Filter": "Service.Meta.version == v1"}}})
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule" and r.spec["host"] == "reviews"]
    assert dr.spec["failover"] == [{"targets": [{"host": "ratings", "subset": "blue"}, {"subset": "v2"}]}]
    assert validate_set(list(result.resources)) == []


def test_a_resolver_with_only_a_failover_to_another_service_is_a_rule():
    # no subsets, no load balancer: the Failover alone still compiles (it used to be dropped with the rule)
    result = _compile({"Kind": "service-resolver", "Name": "ratings", "Failover": {"*": {"Service": "reviews"}}})
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule"]
    assert dr.spec == {"host": "ratings", "failover": [{"targets": [{"host": "reviews"}]}]}
    assert validate_set(list(result.resources)) == [] and not result.findings


def test_a_failover_to_another_service_in_given_datacenters_names_them_on_its_targets():
    # Service with Datacenters: that service in each of them, in order; Targets[].Datacenter: each target there
    result = _compile({"Kind": "service-resolver", "Name": "ratings",
                       "Failover": {"*": {"Service": "reviews", "Datacenters": ["dc2", "dc3"]}}})
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule"]
    assert dr.spec["failover"] == [{"targets": [{"host": "reviews", "datacenter": "dc2"},
                                                {"host": "reviews", "datacenter": "dc3"}]}]
    assert not [f for f in result.findings if f.severity == "unsupported"], result.findings
    result = _compile({**RESOLVER, "Failover": {"v1": {"Targets": [
        {"ServiceSubset": "v2", "Datacenter": "dc2"}, {"Service": "details", "Datacenter": "dc3"},
        {"ServiceSubset": "v2"}]}}})
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule"]
    # v2 in dc2, details in dc3, then v2 anywhere
    assert dr.spec["failover"] == [{"subset": "v1", "targets": [
        {"subset": "v2", "datacenter": "dc2"}, {"host": "details", "datacenter": "dc3"}, {"subset": "v2"}]}]
    assert validate_set(list(result.resources)) == []


def test_unsupported_failover_parts_are_reported():
    result = _compile({**RESOLVER, "Failover": {
        "v9": {"ServiceSubset": "v2"},
        "v1": {"Targets": [{"ServiceSubset": "v2", "Peer": "other"}, {"Service": "ratings", "ServiceSubset": "x"}]},
        "v2": {"Datacenters": ["dc2"]}}})
    fields = {f.field for f in result.findings if f.severity == "unsupported"}
    assert {"Failover.v9", "Failover.v1.Targets[0].Peer", "Failover.v1", "Failover.v2.Datacenters"} <= fields, fields


DR = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
  failover:
"""


def test_destination_rule_failover_is_validated():
    with pytest.raises(ValidationError) as info:
        load_documents(DR + """  - subset: v1
    targets: [{subset: v1}, {subset: v7}]
  - subset: v4
    targets: [{host: details}]
""", "dr.yaml")
    paths = {e.path for e in info.value.errors}
    assert {"spec.failover[0].targets[0]", "spec.failover[0].targets[1].subset", "spec.failover[1].subset"} <= paths
    docs = load_documents(DR + "  - targets: [{host: ratings, subset: blue}, {host: details}]\n", "dr.yaml")
    assert [e.path for e in validate_set(docs)] == ["spec.failover[0].targets[0].subset"]  # no rule for ratings


def test_a_failover_target_may_name_a_datacenter():
    # the entry's own subset in another datacenter is a target; a datacenter name is checked
    [doc] = load_documents(DR + "  - subset: v1\n    targets: [{datacenter: dc2}, {host: details, datacenter: dc3}]\n",
                           "dr.yaml")
    assert doc.spec["failover"][0]["targets"][0] == {"datacenter": "dc2"}
    for targets, path in (("[{datacenter: DC2}]", "spec.failover[0].targets[0].datacenter"),
                          ("[{datacenter: dc2}, {subset: v1}]", "spec.failover[0].targets[1]")):
        with pytest.raises(ValidationError) as info:
            load_documents(DR + f"  - subset: v1\n    targets: {targets}\n", "dr.yaml")
        assert [e.path for e in info.value.errors] == [path]
