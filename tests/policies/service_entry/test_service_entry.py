"""ServiceEntry: validation (field paths, reasons) and what an upstream naming its host gets (pure builds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.resources import load_documents
from meshcore.resources.loader import validate_set
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.xds.validate import validate_snapshot
from tests.policies._catalog import free_port, snapshot

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: ext}\n"


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + "spec: " + spec + "\n", "se.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_valid_entry_loads():
    [r] = load_documents(HEAD + "spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], "
                                "resolution: DNS}\n", "se.yaml")
    assert r.typed.ports[0].family == "tls"


def test_port_protocols_in_any_case_as_istio():
    """Istio's egress sample writes protocol: http (Istio reads protocols case-insensitively)."""
    [r] = load_documents(HEAD + "spec: {hosts: [www.googleapis.com], ports: [{number: 443, name: https, protocol: http}], "
                                "location: MESH_EXTERNAL, resolution: DNS}\n", "se.yaml")
    assert r.typed.ports[0].protocol == "HTTP"
    assert "did you mean" in _errors("{hosts: [a.example.com], ports: [{number: 1, name: p, protocol: htp}], "
                                     "resolution: DNS}")["spec.ports[0].protocol"]


def test_errors_say_where_and_why():
    errs = _errors("{hosts: ['*.example.com', payments], ports: [{number: 80, name: http, protocol: HTTP}], "
                   "resolution: DNS}")
    assert "wildcard hosts need resolution NONE" in errs["spec.hosts[0]"]
    assert "a Consul service in meshcore" in errs["spec.hosts[1]"]
    errs = _errors("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}, "
                   "{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: db.example.com, "
                   "ports: {grpc: 9}}]}")
    assert errs["spec.ports[1].number"] == "port 80 is already declared at ports[0]"
    assert "must be unique" in errs["spec.ports[1].name"]
    assert "resolution STATIC needs an IP address" in errs["spec.endpoints[0].address"]
    assert errs["spec.endpoints[0].ports.grpc"].startswith('no port named "grpc" in spec.ports')


def test_resolution_none_and_mesh_internal_are_refused_with_the_reason():
    errs = _errors("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: NONE, "
                   "location: MESH_INTERNAL}")
    assert "traffic capture" in errs["spec.resolution"] and "write resolution: DNS" in errs["spec.resolution"]
    assert "register the workload in Consul" in errs["spec.location"]
    errs = _errors("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}")
    assert errs["spec.endpoints"] == "resolution STATIC needs endpoints (their IP addresses)"


def test_set_checks_hosts_across_resources():
    docs = load_documents(HEAD + "spec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], "
                                 "resolution: DNS}\n---\n" + HEAD.replace("name: ext", "name: ext2")
                          + "spec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], "
                            "resolution: DNS}\n---\napiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\n"
                            "metadata: {name: v}\nspec: {hosts: [b.example.com], http: [{route: [{destination: "
                            "{host: a.example.com}}]}]}\n", "set.yaml")
    errs = {(e.source, e.path): e.message for e in validate_set(docs)}
    assert "already declared by ServiceEntry default/ext" in errs[("ServiceEntry/default/ext2", "spec.hosts[0]")]
    assert "add a ServiceEntry with hosts: [b.example.com]" in errs[("VirtualService/default/v", "spec.hosts[0]")]
    assert ("VirtualService/default/v", "spec.http[0].route[0].destination.host") not in errs


def _catalog(root: Path, host: str = "127.0.0.1", binds=((18080, "web"), (443, "cron"))) -> None:
    """One node: for each ``(local port, service)`` of ``binds``, that service with an upstream to a ServiceEntry host
    on that local port."""
    d = root / "n1"
    d.mkdir(parents=True)
    (d / "node.json").write_text(json.dumps({"node_name": "n1", "advertise_addr": host, "datacenter": "dc1"}))
    services: dict[str, list] = {}
    for port, service in binds:
        services.setdefault(service, []).append(
            {"destination_name": "api.example.com", "local_bind_address": host, "local_bind_port": port})
    for service, ups in services.items():
        body = {"name": service, "id": f"{service}-v1", "port": free_port(host), "meta": {"version": "v1"},
                "connect": {"sidecar_service": {"port": free_port(host),
                                                "proxy": {"local_service_address": host, "upstreams": ups}}}}
        (d / f"{service}.json").write_text(json.dumps({"service": body}))


ENTRY = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: tls, protocol: TLS}
  resolution: DNS
  endpoints:
  - {address: eu.api.example.com, labels: {region: eu}, locality: eu/eu-1}
  - {address: us.api.example.com, ports: {tls: 8443}, labels: {region: us}, weight: 2}
"""


EU_SUBSET = """---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  subsets: [{name: eu, labels: {region: eu}}]
"""


def test_an_upstream_naming_the_host_gets_the_entrys_cluster(tmp_path):
    _catalog(tmp_path / "c")
    built = build_proxy(snapshot(tmp_path / "c", ENTRY), ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    clusters = {cl.name: cl for cl in built[CLUSTER]}

    def addresses(name: str) -> list[tuple[str, int]]:
        return [(ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value)
                for group in clusters[name].load_assignment.endpoints for ep in group.lb_endpoints]

    web, cron = clusters["outbound:api.example.com|web"], clusters["outbound:api.example.com|cron"]
    assert web.type == cluster_pb2.Cluster.STRICT_DNS and not web.HasField("transport_socket")
    # web binds 18080: the entry's first port (80); cron binds 443: the entry's port numbered like it (TLS).
    assert addresses(web.name) == [("eu.api.example.com", 80), ("us.api.example.com", 80)]
    assert addresses(cron.name) == [("eu.api.example.com", 443), ("us.api.example.com", 8443)]
    assert web.load_assignment.endpoints[0].locality.zone == "eu-1"
    assert web.load_assignment.endpoints[1].lb_endpoints[0].load_balancing_weight.value == 2
    assert not [cla for cla in built[ENDPOINT] if cla.cluster_name.startswith("outbound:api.example.com")]
    tls_listener = next(l for l in built[LISTENER] if l.name == "outbound:api.example.com:443")
    config = tls_listener.filter_chains[0].filters[0].typed_config
    assert config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR)
    assert "outbound:api.example.com:443" not in {r.name for r in built[ROUTE]}
    assert "outbound:api.example.com:18080" in {r.name for r in built[ROUTE]}


def test_one_service_cannot_reach_two_ports_of_a_host_by_upstreams(tmp_path):
    _catalog(tmp_path / "c", binds=((18080, "web"), (443, "web")))
    with pytest.raises(SnapshotInvalid, match="two upstreams name 'api.example.com' on different ports"):
        build_proxy(snapshot(tmp_path / "c", ENTRY), ProxyInfo(node="n1", secrets_dir="/s"))


def test_subsets_of_an_entry_host_select_endpoints_by_labels(tmp_path):
    _catalog(tmp_path / "c")
    rules = ENTRY + EU_SUBSET
    built = build_proxy(snapshot(tmp_path / "c", rules), ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    [subset] = [cl for cl in built[CLUSTER] if cl.name == "outbound:api.example.com|cron|eu"]
    hosts = [ep.endpoint.address.socket_address.address for g in subset.load_assignment.endpoints for ep in g.lb_endpoints]
    assert hosts == ["eu.api.example.com"]
    assert subset.load_assignment.endpoints[0].locality.region == "eu"


def test_tls_routes_on_an_upstream_of_a_tls_port(tmp_path):
    """cron's upstream reaches the entry's TLS port: the VirtualService's tls[] rule becomes an SNI chain before the
    upstream's own (the TLS inspector added); on web's HTTP upstream the same rule refuses the config."""
    _catalog(tmp_path / "c", binds=((443, "cron"),))
    rules = ENTRY + EU_SUBSET + """---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com]}]
    route: [{destination: {host: api.example.com, subset: eu}}]
"""
    built = build_proxy(snapshot(tmp_path / "c", rules), ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    listener = next(l for l in built[LISTENER] if l.name == "outbound:api.example.com:443")
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    first, default = listener.filter_chains
    assert list(first.filter_chain_match.server_names) == ["api.example.com"]
    proxy = tcp_proxy_pb2.TcpProxy()
    first.filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound:api.example.com|cron|eu"
    default.filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound:api.example.com|cron"
    _catalog(tmp_path / "h", binds=((18080, "web"),))
    with pytest.raises(SnapshotInvalid, match="tls routes need a TLS or TCP upstream"):
        build_proxy(snapshot(tmp_path / "h", rules), ProxyInfo(node="n1", secrets_dir="/s"))
