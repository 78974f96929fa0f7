"""Port-level ``localityLbSetting`` / ``zoneAwareLbSetting`` (issue 17): a port's setting applies where the port has
clusters and endpoints of its own (a Consul service whose instances share the port, each ServiceEntry port's
clusters); a Consul service whose instances register different ports refuses the caller's config with the path.
ServiceEntry upstream and egress clusters take their own port's portLevelSettings."""

from __future__ import annotations

import json

import pytest

from meshcore import naming
from meshcore.errors import SnapshotInvalid
from meshcore.policies.destination_rule.spec import spec_of
from meshcore.resources import load_documents
from meshcore.xds.generate import CLUSTER, ENDPOINT

from .._catalog import build, free_port, write_catalog

DR = "apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n"
PORT_DISTRIBUTE = """    portLevelSettings:
    - port: {number: PORT}
      loadBalancer:
        localityLbSetting:
          distribute: [{from: "*", to: {"dc1/*": 100}}]
"""


def _web_calls(tmp_path, host: str, bind: int | None = None) -> None:
    web = tmp_path / "n1" / "web.json"
    definition = json.loads(web.read_text())
    definition["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"] = [
        {"destination_name": host, "local_bind_port": bind or free_port()}]
    web.write_text(json.dumps(definition))


def test_the_ports_setting_replaces_the_levels_for_that_port_only():
    [rule] = load_documents(DR + "  host: api\n  trafficPolicy:\n    loadBalancer: {localityLbSetting: "
                            "{failover: [{from: dc1, to: dc2}]}}\n" + PORT_DISTRIBUTE.replace("PORT", "8080"), "dr.yaml")
    spec = spec_of(rule)
    assert spec.effective_policy(None, 8080).locality_distribute() == (("*", (("dc1/*", 100),)),)
    assert spec.effective_policy(None, 8080).locality_failover() is None  # distribute replaces failover
    assert spec.effective_policy(None, 9090).locality_failover() == (("dc1", "dc2"),)
    assert spec.effective_policy(None, None).locality_failover() == (("dc1", "dc2"),)


def test_a_service_on_one_port_is_ranked_by_that_ports_setting(tmp_path):
    services = write_catalog(tmp_path, [{"name": "web"}, {"name": "api"}])
    _web_calls(tmp_path, "api")
    port = services["api"]["port"]
    built = build(tmp_path, DR + "  host: api\n  trafficPolicy:\n" + PORT_DISTRIBUTE.replace("PORT", str(port)))
    [cla] = [c for c in built[ENDPOINT] if c.cluster_name == naming.upstream_endpoints("api", None)]
    assert [g.load_balancing_weight.value for g in cla.endpoints] == [100]
    [cluster] = [c for c in built[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    other = build(tmp_path, DR + "  host: api\n  trafficPolicy:\n" + PORT_DISTRIBUTE.replace("PORT", str(port + 1)))
    [cluster] = [c for c in other[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    assert not cluster.common_lb_config.HasField("locality_weighted_lb_config")  # another port: nothing


def test_a_service_on_several_ports_refuses_a_port_level_locality(tmp_path):
    services = write_catalog(tmp_path, [{"name": "web"}, {"name": "api"}])
    write_catalog(tmp_path, [{"name": "api"}], node="n2", address="127.0.0.2")
    _web_calls(tmp_path, "api")
    port = services["api"]["port"]
    text = (DR + "  host: api\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n"
            + PORT_DISTRIBUTE.replace("PORT", str(port)).replace("\n    ", "\n      ").replace("    portLevel", "      portLevel", 1))
    with pytest.raises(SnapshotInvalid) as info:
        build(tmp_path, text)
    [problem] = info.value.problems
    assert "spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting" in problem
    assert "the instances of 'api' register ports " in problem
    assert "one cluster with one set of endpoints serves all of them" in problem
    # only a locality setting is refused there: the port's other fields keep their rules
    plain = text.replace("""        loadBalancer:
          localityLbSetting:
            distribute: [{from: "*", to: {"dc1/*": 100}}]""", "        connectionPool: {tcp: {maxConnections: 3}}")
    assert build(tmp_path, plain)


ENTRY_HEAD = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: http-alt, protocol: HTTP}]
  resolution: STATIC
  endpoints:
"""
ENTRY = ENTRY_HEAD + """  - {address: 192.0.2.50, locality: dc1/a}
  - {address: 192.0.2.51, locality: dc2/b}
---
""" + DR + """  host: api.example.com
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 50}}
    portLevelSettings:
    - port: {number: 8080}
      connectionPool: {tcp: {maxConnections: 7}}
      loadBalancer:
        localityLbSetting:
          distribute: [{from: "*", to: {"dc2/*": 100}}]
"""


def _max_connections(cluster) -> int:
    return cluster.circuit_breakers.thresholds[0].max_connections.value


def test_a_service_entry_upstream_cluster_takes_its_ports_settings(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}])
    _web_calls(tmp_path, "api.example.com", bind=8080)  # reaches the entry's port 8080
    built = build(tmp_path, ENTRY)
    [cluster] = [c for c in built[CLUSTER] if c.name == naming.upstream_cluster("api.example.com", "web")]
    assert _max_connections(cluster) == 7
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    groups = [(g.locality.region, g.load_balancing_weight.value) for g in cluster.load_assignment.endpoints]
    assert groups == [("dc2", 100)]  # dc1 gets nothing from this caller
    # on the entry's port 80, the level's settings: no weights
    write_catalog(tmp_path, [{"name": "web"}])
    _web_calls(tmp_path, "api.example.com", bind=80)
    [cluster] = [c for c in build(tmp_path, ENTRY)[CLUSTER] if c.name == naming.upstream_cluster("api.example.com", "web")]
    assert _max_connections(cluster) == 50 and not cluster.common_lb_config.HasField("locality_weighted_lb_config")


def test_egress_clusters_take_their_own_ports_settings(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}])
    sidecar = """---
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {name: web, namespace: default}
spec:
  workloadSelector: {labels: {app: web}}
  egress:
  - port: {number: 15080, protocol: HTTP, name: egress-http}
    hosts: ["*/api.example.com"]
"""
    built = build(tmp_path, ENTRY + sidecar)
    clusters = {c.name: c for c in built[CLUSTER]}
    on_8080, on_80 = clusters[naming.egress_cluster("api.example.com", 8080, None)], \
        clusters[naming.egress_cluster("api.example.com", 80, None)]
    assert _max_connections(on_8080) == 7 and on_8080.common_lb_config.HasField("locality_weighted_lb_config")
    assert _max_connections(on_80) == 50 and not on_80.common_lb_config.HasField("locality_weighted_lb_config")


FAILOVER_ENTRY = ENTRY_HEAD + """  - {address: 192.0.2.60, locality: dc2/b, labels: {version: v1}}
  - {address: 192.0.2.61, locality: dc1/a, labels: {version: v2}}
  - {address: 192.0.2.62, locality: dc3, labels: {version: v1}}
---
""" + DR + """  host: api.example.com
  trafficPolicy:
    loadBalancer:
      localityLbSetting: {failover: [{from: dc1, to: dc3}]}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer:
        localityLbSetting: {failoverPriority: ["version=v1"]}
"""


def _priorities(cluster) -> list[tuple[int, str, list[str]]]:
    return [(g.priority, g.locality.region, [e.endpoint.address.socket_address.address for e in g.lb_endpoints])
            for g in cluster.load_assignment.endpoints]


def test_service_entry_endpoints_fail_over_by_locality_and_by_label_per_port(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}])  # node n1 in dc1
    _web_calls(tmp_path, "api.example.com", bind=80)
    [cluster] = [c for c in build(tmp_path, FAILOVER_ENTRY)[CLUSTER]
                 if c.name == naming.upstream_cluster("api.example.com", "web")]
    # own datacenter first, then the failover target dc3, then the rest
    assert _priorities(cluster) == [(0, "dc1", ["192.0.2.61"]), (1, "dc3", ["192.0.2.62"]), (2, "dc2", ["192.0.2.60"])]
    write_catalog(tmp_path, [{"name": "web"}])
    _web_calls(tmp_path, "api.example.com", bind=8080)  # port 8080: its own setting, by the endpoints' labels
    [cluster] = [c for c in build(tmp_path, FAILOVER_ENTRY)[CLUSTER]
                 if c.name == naming.upstream_cluster("api.example.com", "web")]
    ranked = {address: priority for priority, _region, addresses in _priorities(cluster) for address in addresses}
    assert ranked == {"192.0.2.60": 0, "192.0.2.62": 0, "192.0.2.61": 1}


def test_envoy_accepts_ranked_service_entry_endpoints(tmp_path):
    from tests.traffic.test_build import _validate_with_envoy

    write_catalog(tmp_path, [{"name": "web"}])
    _web_calls(tmp_path, "api.example.com", bind=8080)
    built = build(tmp_path, FAILOVER_ENTRY, secrets_dir=str(tmp_path))
    (tmp_path / naming.secret_file("svid:web")).write_text("resources: []\n")
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
