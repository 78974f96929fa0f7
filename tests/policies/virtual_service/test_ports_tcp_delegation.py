"""VirtualService destination ports, tcp matches, delegation and the remaining http fields (issue 17 item 1).

Built through the real path (Consul service definitions read by the file source, resources by the loader,
``build_proxy``): which cluster a ``destination.port`` means for a Consul service whose instances register
different ports and for a ServiceEntry host with several ports; which ``tcp[]`` rule a caller's tcp_proxy takes;
how a delegate's rules merge with the root's (Istio's rules) and what validation refuses. The golden case is
``meshcore/policies/virtual_service/testdata/vm1-reviews-ports-delegate``; real Envoys: ``tests/e2e/test_traffic.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.catalog.files import FileCatalogSource
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.policies.virtual_service.delegation import merge_matches
from meshcore.policies.virtual_service.schema import validate_set
from meshcore.policies.virtual_service.spec import Match, StringMatch
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore import naming
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.traffic.test_build import _validate_with_envoy

VS = "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\n"
DR = "apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\n"
SE = "apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\n"


def _service(d: Path, name: str, sid: str, port: int, mesh_port: int, meta: dict | None = None,
             upstreams: list[tuple[str, int]] = ()) -> None:
    (d / f"{sid}.json").write_text(json.dumps({"service": {
        "name": name, "id": sid, "port": port, "meta": {"version": "v1", **(meta or {})},
        "connect": {"sidecar_service": {"port": mesh_port, "proxy": {
            "local_service_address": "127.0.0.1",
            "upstreams": [{"destination_name": u, "local_bind_port": p} for u, p in upstreams]}}}}}))


@pytest.fixture
def catalog(tmp_path) -> Path:
    """n1: app and batch, callers of web (HTTP), db (TCP) and api.example.test (a ServiceEntry host); n2: web on
    ports 8001 (v1) and 8002 (v2), db v1 and v2 on 5432."""
    n1, n2 = tmp_path / "n1", tmp_path / "n2"
    for d, name, addr in ((n1, "n1", "127.0.0.1"), (n2, "n2", "127.0.0.2")):
        d.mkdir()
        (d / "node.json").write_text(json.dumps({"node_name": name, "advertise_addr": addr, "datacenter": "dc1"}))
    ups = [("web", 18001), ("db", 15432), ("api.example.test", 18080)]
    _service(n1, "app", "app-1", 7000, 21000, upstreams=ups)
    _service(n1, "batch", "batch-1", 7001, 21001, upstreams=[("db", 25432)])
    _service(n2, "web", "web-1", 8001, 21100)
    _service(n2, "web", "web-2", 8002, 21101, {"version": "v2"})
    _service(n2, "db", "db-1", 5432, 21200, {"protocol": "tcp"})
    _service(n2, "db", "db-2", 5432, 21201, {"protocol": "tcp", "version": "v2"})
    return tmp_path


def _build(root: Path, resources: str, node: str = "n1", secrets_dir: str = "/s") -> dict:
    catalog = FileCatalogSource(root).poll(None, 0).catalog
    return build_proxy(MeshSnapshot.build(catalog, load_documents(resources, "r.yaml")),
                       ProxyInfo(node=node, secrets_dir=secrets_dir))


SUBSETS = DR + """metadata: {name: db}
spec:
  host: db
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


# --- destination ports ---------------------------------------------------------------------------------


def _route_cluster(built: dict, route_config: str) -> str:
    [rc] = [r for r in built[ROUTE] if r.name == route_config]
    return rc.virtual_hosts[0].routes[0].route.cluster


def test_a_port_of_a_service_whose_instances_differ_narrows_to_those_instances(catalog):
    built = _build(catalog, VS + "metadata: {name: web}\nspec:\n  hosts: [web]\n"
                   "  http: [{route: [{destination: {host: web, port: {number: 8002}}}]}]\n")
    assert _route_cluster(built, "outbound:web:18001") == "outbound:web|app:8002"
    [cluster] = [c for c in built[CLUSTER] if c.name == "outbound:web|app:8002"]
    [usual] = [c for c in built[CLUSTER] if c.name == "outbound:web|app"]
    assert cluster.eds_cluster_config.service_name == "outbound:web:8002"
    assert cluster.transport_socket == usual.transport_socket  # the same mTLS to the same identities
    [cla] = [a for a in built[ENDPOINT] if a.cluster_name == "outbound:web:8002"]
    ports = [ep.endpoint.address.socket_address.port_value for g in cla.endpoints for ep in g.lb_endpoints]
    assert ports == [21101]  # web-2's sidecar: the instance registered on 8002
    [base] = [a for a in built[ENDPOINT] if a.cluster_name == "outbound:web"]
    for group, base_group in zip(cla.endpoints, base.endpoints):  # the groups as they were, fewer endpoints
        group.ClearField("lb_endpoints")
        base_group.ClearField("lb_endpoints")
        assert group == base_group
    assert cla.HasField("policy") == base.HasField("policy")


def test_a_port_every_instance_shares_is_the_usual_cluster(catalog):
    built = _build(catalog, SUBSETS + "---\n" + VS + "metadata: {name: db}\nspec:\n  hosts: [db]\n"
                   "  tcp: [{route: [{destination: {host: db, subset: v2, port: {number: 5432}}}]}]\n")
    assert _tcp_cluster(built, "outbound:db:15432") == "outbound:db|app|v2"
    assert not any(c.name.endswith(":5432") for c in built[CLUSTER])


def test_a_port_no_instance_registers_refuses_the_callers_config(catalog):
    with pytest.raises(SnapshotInvalid) as info:
        _build(catalog, VS + "metadata: {name: web}\nspec:\n  hosts: [web]\n"
               "  http: [{route: [{destination: {host: web, port: {number: 9}}}]}]\n")
    assert "destination port 9 of host 'web': no instance of it is registered on that port (its instances' " \
           "ports: 8001, 8002)" in str(info.value)


ENTRY = SE + """metadata: {name: api}
spec:
  hosts: [api.example.test]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: admin, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.7}]
"""


def test_a_service_entry_port_picks_that_ports_endpoints(catalog):
    built = _build(catalog, ENTRY + "---\n" + VS + "metadata: {name: api}\nspec:\n  hosts: [api.example.test]\n"
                   "  http:\n  - match: [{uri: {prefix: /admin}}]\n"
                   "    route: [{destination: {host: api.example.test, port: {number: 8080}}}]\n"
                   "  - route: [{destination: {host: api.example.test, port: {number: 80}}}]\n")
    [rc] = [r for r in built[ROUTE] if r.name == "outbound:api.example.test:18080"]
    clusters = [r.route.cluster for r in rc.virtual_hosts[0].routes]
    assert clusters == ["outbound:api.example.test|app:8080", "outbound:api.example.test|app"]  # 80: the default
    by_name = {c.name: c for c in built[CLUSTER]}
    admin = by_name["outbound:api.example.test|app:8080"].load_assignment
    assert [ep.endpoint.address.socket_address.port_value for g in admin.endpoints for ep in g.lb_endpoints] == [8080]


def test_validation_refuses_a_port_the_service_entry_lacks():
    resources = load_documents(ENTRY + "---\n" + VS + "metadata: {name: api}\nspec:\n  hosts: [api.example.test]\n"
                               "  http: [{route: [{destination: {host: api.example.test, port: {number: 81}}}]}]\n",
                               "r.yaml")
    [error] = validate_set(resources)
    assert error.path == "spec.http[0].route[0].destination.port.number"
    assert error.message == 'ServiceEntry default/api declares no port 81 for host "api.example.test" (its ports: 80, 8080)'


def test_envoy_accepts_port_clusters_and_tcp_rules(catalog, tmp_path):
    """The real Envoy (--mode validate) takes the narrowed clusters and assignments, the ServiceEntry port cluster
    and the tcp rules' proxies (meshcore's own validation does not check every Envoy constraint)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("svid:app", "svid:batch"):
        (secrets / naming.secret_file(name)).write_text("resources: []\n")
    built = _build(catalog, "---\n".join([ENTRY, TCP_RULES, VS + "metadata: {name: web}\nspec:\n  hosts: [web]\n"
                   "  http: [{route: [{destination: {host: web, port: {number: 8002}}}]}]\n",
                   VS + "metadata: {name: api}\nspec:\n  hosts: [api.example.test]\n"
                   "  http: [{route: [{destination: {host: api.example.test, port: {number: 8080}}}]}]\n"]),
                   secrets_dir=str(secrets))
    assert {"outbound:web|app:8002", "outbound:api.example.test|app:8080"} <= {c.name for c in built[CLUSTER]}
    result = _validate_with_envoy(built, secrets)
    assert result.returncode == 0, result.stdout + result.stderr


# --- tcp matches ---------------------------------------------------------------------------------------


def _tcp_cluster(built: dict, listener: str) -> str:
    [lst] = [item for item in built[LISTENER] if item.name == listener]
    for chain in lst.filter_chains:
        for f in chain.filters:
            if f.name == "envoy.filters.network.tcp_proxy":
                proxy = tcp_proxy_pb2.TcpProxy()
                f.typed_config.Unpack(proxy)
                return proxy.cluster or ",".join(f"{w.name}={w.weight}" for w in proxy.weighted_clusters.clusters)
    raise AssertionError(f"no tcp_proxy on {listener}")


TCP_RULES = SUBSETS + "---\n" + VS + """metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{gateways: [edge]}]
    route: [{destination: {host: db, subset: v1}}]
  - match: [{sourceLabels: {app: batch}}, {port: 15999}]
    route: [{destination: {host: db, subset: v2}}]
  - match: [{sourceNamespace: default, port: 15432}]
    route: [{destination: {host: db, subset: v1}, weight: 3}, {destination: {host: db, subset: v2}, weight: 1}]
"""


def test_the_first_tcp_rule_that_applies_to_the_caller_and_listener_wins(catalog):
    built = _build(catalog, TCP_RULES)
    # app on 15432: the gateway-only rule and batch's rule do not apply; the third (port 15432) does
    assert _tcp_cluster(built, "outbound:db:15432") == "outbound:db|app|v1=3,outbound:db|app|v2=1"
    # batch (sourceLabels): the second rule
    assert _tcp_cluster(built, "outbound:db:25432") == "outbound:db|batch|v2"


def test_no_tcp_rule_applying_leaves_the_upstream_itself(catalog):
    built = _build(catalog, VS + "metadata: {name: db}\nspec:\n  hosts: [db]\n"
                   "  tcp: [{match: [{sourceLabels: {app: nobody}}], route: [{destination: {host: web}}]}]\n")
    assert _tcp_cluster(built, "outbound:db:15432") == "outbound:db|app"
    assert not any(c.name.startswith("outbound:web|app") and c.name != "outbound:web|app" for c in built[CLUSTER])


@pytest.mark.parametrize("field,reason", [
    ("destinationSubnets: [10.0.0.0/8]", "matches the address the app dialled"),
    ("sourceSubnet: 10.0.0.0/8", "always the local app (loopback)"),
])
def test_subnet_matches_are_refused_with_their_reason(field, reason):
    with pytest.raises(ValidationError) as info:
        load_documents(VS + "metadata: {name: db}\nspec:\n  hosts: [db]\n"
                       f"  tcp: [{{match: [{{{field}}}], route: [{{destination: {{host: db}}}}]}}]\n", "r.yaml")
    [error] = info.value.errors
    assert error.path == f"spec.tcp[0].match[0].{field.split(':')[0]}" and reason in error.message


# --- delegation ----------------------------------------------------------------------------------------


def _vs(name: str, body: str) -> str:
    return VS + f"metadata: {{name: {name}}}\nspec:\n" + body


def test_delegation_is_validated_across_the_set():
    resources = load_documents("---\n".join([
        _vs("root", "  hosts: [web]\n  http:\n  - delegate: {name: missing}\n  - delegate: {name: other-root}\n"
                    "  - delegate: {name: d1}\n"),
        _vs("other-root", "  hosts: [db]\n  http: [{route: [{destination: {host: db}}]}]\n"),
        _vs("d1", "  http: [{delegate: {name: d2}}]\n"),
        _vs("d2", "  http: [{match: [{uri: {prefix: /x}}], delegate: {name: d1}}]\n"),
    ]), "r.yaml")
    errors = {(e.source.split("/")[-1], e.path): e.message for e in validate_set(resources)}
    assert errors[("root", "spec.http[0].delegate")].startswith("no VirtualService default/missing; apply the delegate")
    assert "has hosts, so it routes on its own" in errors[("root", "spec.http[1].delegate")]
    assert errors[("d1", "spec.http[0].delegate")].startswith("delegation cycle default/d1 -> default/d2 -> default/d1")
    assert errors[("d2", "spec.http[0].delegate")].startswith("delegation cycle default/d2 -> default/d1 -> default/d2")
    assert ("root", "spec.http[2].delegate") not in errors  # d1 exists and has no hosts; the cycle is reported on it


def test_a_delegate_has_http_rules_only():
    with pytest.raises(ValidationError) as info:
        load_documents(_vs("d", "  gateways: [mesh]\n  tcp: [{route: [{destination: {host: db}}]}]\n"), "r.yaml")
    paths = {e.path: e.message for e in info.value.errors}
    assert set(paths) == {"spec.gateways", "spec.tcp"}
    assert paths["spec.tcp"].startswith("a delegate VirtualService (one without hosts) has no tcp")


def test_a_missing_delegate_at_build_time_refuses_the_config(catalog):
    # the apply path refuses this set (validate_set); a store that holds it anyway fails the caller, loudly
    with pytest.raises(SnapshotInvalid) as info:
        _build(catalog, _vs("web", "  hosts: [web]\n  http: [{delegate: {name: gone}}]\n"))
    assert "VirtualService default/web http[0].delegate: no VirtualService default/gone" in str(info.value)


def _m(**kw) -> Match:
    return Match(**kw)


URI = lambda kind, value: StringMatch(kind, value)  # noqa: E731


@pytest.mark.parametrize("root,leaf,merged", [
    # prefix under prefix: the leaf's; the root's header filled in
    ((_m(uri=URI("prefix", "/api"), headers=(("x", URI("exact", "1")),)),), (_m(uri=URI("prefix", "/api/v1")),),
     (_m(uri=URI("prefix", "/api/v1"), headers=(("x", URI("exact", "1")),)),)),
    # exact under prefix fits; prefix under exact conflicts; different exact conflicts
    ((_m(uri=URI("prefix", "/api")),), (_m(uri=URI("exact", "/api/x")),), (_m(uri=URI("exact", "/api/x")),)),
    ((_m(uri=URI("exact", "/api")),), (_m(uri=URI("prefix", "/api")),), None),
    ((_m(uri=URI("exact", "/a")),), (_m(uri=URI("exact", "/b")),), None),
    # a prefix outside the root's conflicts; a regex under anything but nothing conflicts
    ((_m(uri=URI("prefix", "/api")),), (_m(uri=URI("prefix", "/web")),), None),
    ((_m(uri=URI("prefix", "/api")),), (_m(uri=URI("regex", "/api/.*")),), None),
    # the leaf fits one of two root alternatives: one merged alternative
    ((_m(uri=URI("prefix", "/a")), _m(uri=URI("prefix", "/b"))), (_m(uri=URI("prefix", "/b/1")),),
     (_m(uri=URI("prefix", "/b/1")),)),
    # sourceLabels: the root's must hold in the leaf; ports must agree; names join
    ((_m(source_labels=(("app", "a"),)),), (_m(source_labels=(("app", "b"),)),), None),
    ((_m(port=80),), (_m(port=81),), None),
    ((_m(name="r", port=80),), (_m(name="l"),), (_m(name="r-l", port=80),)),
    # either side without match takes the other's
    ((), (_m(port=80),), (_m(port=80),)),
    ((_m(port=80),), (), (_m(port=80),)),
])
def test_matches_merge_as_istio_merges_them(root, leaf, merged):
    assert merge_matches(root, leaf) == merged


# --- the other http fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("rule,path,message", [
    ("fault: {abort: {grpcStatus: UNAVAILABEL}}", "spec.http[0].fault.abort.grpcStatus", 'did you mean "UNAVAILABLE"?'),
    ("fault: {abort: {grpcStatus: UNAVAILABLE, httpStatus: 503}}", "spec.http[0].fault.abort",
     "abort must set exactly one of: httpStatus, grpcStatus (got httpStatus, grpcStatus)"),
    ("fault: {abort: {http2Error: 'x'}}", "spec.http[0].fault.abort.http2Error",
     "not implemented by Istio either (its API marks http2Error NOT IMPLEMENTED)"),
    ("match: [{statPrefix: ''}]", "spec.http[0].match[0].statPrefix", "must not be empty"),
    ("match: [{port: 0}]", "spec.http[0].match[0].port", "1-65535"),
])
def test_http_fields_are_validated_at_their_path(rule, path, message):
    with pytest.raises(ValidationError) as info:
        load_documents(_vs("web", f"  hosts: [web]\n  http: [{{route: [{{destination: {{host: web}}}}], {rule}}}]\n"),
                       "r.yaml")
    errors = {e.path: e.message for e in info.value.errors}
    assert path in errors and message in errors[path], errors


def test_redirect_takes_port_or_derive_port():
    with pytest.raises(ValidationError) as info:
        load_documents(_vs("web", "  hosts: [web]\n  http: [{redirect: {uri: /x, port: 8080, "
                                  "derivePort: FROM_REQUEST_PORT}}]\n"), "r.yaml")
    assert {e.path: e.message for e in info.value.errors} == {
        "spec.http[0].redirect.derivePort": "redirect takes port or derivePort, not both"}


def test_a_gateways_routes_take_match_ports_derive_ports_and_delegates():
    """At an ingress gateway the listener port is the server's: on 8081 the 8081 alternative and the redirect's
    derived port 8081, the 8443 alternative only on 8443; a delegate's rules merge under the root's match."""
    from tests.xds.test_build_golden import _snapshot

    gateway = Path(__file__).resolve().parents[3] / "examples" / "policies" / "bookinfo-gateway.yaml"
    text = gateway.read_text().split("---")[0] + "---\n" + _vs("bookinfo", """  hosts: ["bookinfo.example.com"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{port: 8081, uri: {prefix: /plain}}, {port: 8443, uri: {prefix: /secure}}]
    route: [{destination: {host: productpage}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {prefix: /api}}]
    delegate: {name: api-routes}
""") + "---\n" + _vs("api-routes", """  http:
  - match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: productpage}}]
""")
    built = build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    by_port: dict[str, list] = {}
    for rc in built[ROUTE]:
        for vh in rc.virtual_hosts:
            if "bookinfo.example.com" in vh.domains:
                by_port.setdefault(rc.name, []).extend(vh.routes)
    [plain] = [routes for name, routes in by_port.items() if "8081" in name]
    [secure] = [routes for name, routes in by_port.items() if "8443" in name]
    assert [r.match.prefix for r in plain] == ["/plain", "/old", "/api/v1"]
    assert [r.match.prefix for r in secure] == ["/secure", "/old", "/api/v1"]
    assert plain[1].redirect.port_redirect == 8081 and secure[1].redirect.port_redirect == 8443
    assert plain[2].name == "default/api-routes/http[0]"


def test_a_match_port_may_name_the_listener_or_the_hosts_own_port(catalog):
    """On a sidecar, Istio's match port is the service port: db's registered 5432 selects as app's listener port
    15432 does; another port selects nothing. (The host's ports are read only when a match names one.)"""
    built = _build(catalog, SUBSETS + "---\n" + VS + """metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 9999}]
    route: [{destination: {host: db, subset: v2}}]
  - match: [{port: 5432}]
    route: [{destination: {host: db, subset: v1}}]
""")
    assert _tcp_cluster(built, "outbound:db:15432") == "outbound:db|app|v1"
    built = _build(catalog, VS + "metadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n"
                   "  - match: [{port: 8002, uri: {prefix: /a}}, {port: 18001, uri: {prefix: /b}}, {port: 1, uri: {prefix: /c}}]\n"
                   "    route: [{destination: {host: web}}]\n")
    [rc] = [r for r in built[ROUTE] if r.name == "outbound:web:18001"]
    assert [r.match.prefix for r in rc.virtual_hosts[0].routes] == ["/a", "/b"]


def test_a_service_entry_ports_own_policy_applies_to_its_cluster_and_route(catalog):
    """portLevelSettings of the port a destination names shape its cluster (ring hash) and the route's hash policy
    (the header), as one: the other port's route keeps neither."""
    built = _build(catalog, ENTRY + "---\n" + DR + """metadata: {name: api}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
---
""" + VS + "metadata: {name: api}\nspec:\n  hosts: [api.example.test]\n  http:\n"
                   "  - match: [{uri: {prefix: /admin}}]\n"
                   "    route: [{destination: {host: api.example.test, port: {number: 8080}}}]\n"
                   "  - route: [{destination: {host: api.example.test}}]\n")
    [rc] = [r for r in built[ROUTE] if r.name == "outbound:api.example.test:18080"]
    admin, rest = rc.virtual_hosts[0].routes
    assert [h.header.header_name for h in admin.route.hash_policy] == ["x-user"]
    assert not rest.route.hash_policy
    by_name = {c.name: c for c in built[CLUSTER]}
    assert by_name["outbound:api.example.test|app:8080"].lb_policy == by_name["outbound:api.example.test|app:8080"].RING_HASH
    assert by_name["outbound:api.example.test|app"].lb_policy != by_name["outbound:api.example.test|app"].RING_HASH


def test_the_grpc_status_table_is_grpcs():
    import grpc

    from meshcore.policies.virtual_service.spec import GRPC_STATUS_CODES

    assert GRPC_STATUS_CODES == {code.name: code.value[0] for code in grpc.StatusCode}
