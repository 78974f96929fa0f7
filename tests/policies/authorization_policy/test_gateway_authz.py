"""AuthorizationPolicy at the ingress gateway (meshcore.policies.authorization_policy.gateway): what it puts on the
gateway's listeners and routes, the trusted X-Forwarded-For hops, ports naming the listener's, CUSTOM there, and
remoteIpBlocks refused on sidecars. The data plane (a DENY answered 403 before any backend) is in
tests/e2e/test_istio_ingress.py."""

from __future__ import annotations


import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2

from meshcore.authz.providers import parse_mesh_settings
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo
from meshcore.xds.generate import policy_filters as pf
from tests.xds.test_build_golden import _snapshot

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

GATEWAY = """apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {name: front}
spec:
  selector: {app: ingress-gateway}
  servers: [{port: {number: 8081, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: ["*"]
  gateways: [front]
  http: [{route: [{destination: {host: productpage}}]}]
---
"""


def _policy(name: str, spec: str, namespace: str = "default") -> str:
    return (f"apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n")


def _build(text: str, node: str = "gateway", settings: MeshSettings | None = None) -> dict:
    return build_proxy(_snapshot(text, settings), ProxyInfo(node=node, secrets_dir="/s"))


def _hcms(built: dict):
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    for listener in built[LISTENER]:
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm):
                    yield listener.name, hcm


def _stage(built: dict, route: str, filter_name: str) -> http_rbac_pb2.RBACPerRoute | None:
    [config] = [r for r in built[ROUTE] if r.name == route]
    vhost = config.virtual_hosts[0]
    if filter_name not in vhost.typed_per_filter_config:
        return None
    return pf.per_filter_config(vhost.typed_per_filter_config[filter_name], http_rbac_pb2.RBACPerRoute)


def test_no_policy_leaves_the_gateway_as_it_was():
    built = _build(GATEWAY)
    for _name, hcm in _hcms(built):
        assert not pf.has_policy_filters(hcm)


def test_a_mesh_wide_policy_selects_the_gateway_as_in_istio():
    built = _build(GATEWAY + _policy("deny-all", "{}", "meshcore-system"))
    names = sorted(name for name, _ in _hcms(built))
    assert names == ["gateway:127.0.0.1:8081", "outbound:productpage:8080"]
    for _name, hcm in _hcms(built):
        filters = [f.name for f in hcm.http_filters]
        assert filters.index(pf.AUTHZ_ALLOW) < filters.index(pf.FAULT) and hcm.use_remote_address.value
    for route in ("gateway:127.0.0.1:8081", "outbound:productpage:8080"):
        allow = _stage(built, route, pf.AUTHZ_ALLOW)
        assert allow is not None and not allow.rbac.rules.policies  # allow-nothing: every request 403


def test_ports_name_the_gateway_listener_port():
    built = _build(GATEWAY + _policy("by-port", "{selector: {matchLabels: {app: ingress-gateway}}, rules: "
                                                "[{to: [{operation: {ports: ['8081']}}]}]}"))
    assert list(_stage(built, "gateway:127.0.0.1:8081", pf.AUTHZ_ALLOW).rbac.rules.policies) == ["default/by-port[0]"]
    assert not _stage(built, "outbound:productpage:8080", pf.AUTHZ_ALLOW).rbac.rules.policies  # other port


def test_trusted_proxies_from_the_mesh_config():
    settings = MeshSettings(gateway_trusted_proxies=parse_mesh_settings(
        "defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}").gateway_trusted_proxies)
    for text in (GATEWAY, GATEWAY + _policy("p", "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: "
                                                 "['203.0.113.0/24']}}]}]}")):
        hops = {name: (hcm.xff_num_trusted_hops, hcm.use_remote_address.value) for name, hcm in _hcms(_build(text, settings=settings))}
        assert hops == {"gateway:127.0.0.1:8081": (2, True), "outbound:productpage:8080": (2, True)}
    with pytest.raises(ValidationError, match="numTrustedProxies"):
        parse_mesh_settings("defaultConfig: {gatewayTopology: {numTrustedProxies: -1}}")


def test_remote_ip_blocks_refused_on_sidecars():
    text = _policy("edge", "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: ['203.0.113.0/24']}}]}]}")
    with pytest.raises(SnapshotInvalid, match="ingress gateways only.*ipBlocks"):
        _build(text, node="vm2")
    assert _stage(_build(GATEWAY + text), "gateway:127.0.0.1:8081", pf.AUTHZ_DENY) is not None  # the gateway: fine


def test_custom_at_the_gateway():
    settings = MeshSettings(ext_authz_providers=parse_mesh_settings(
        "extensionProviders: [{name: opa, envoyExtAuthzHttp: {service: 127.0.0.1, port: 8181}}]").ext_authz_providers)
    built = _build(GATEWAY + _policy("ext", "{selector: {matchLabels: {app: ingress-gateway}}, action: CUSTOM, "
                                            "provider: {name: opa}, rules: [{to: [{operation: {paths: ['/api/*']}}]}]}"),
                   settings=settings)
    for _name, hcm in _hcms(built):
        filters = [f.name for f in hcm.http_filters]
        assert filters.index(pf.EXT_AUTHZ) < filters.index(pf.AUTHZ_AUDIT)
    assert "ext_authz|opa" in {c.name for c in built[CLUSTER]}


def test_remote_ip_conditions_validate_like_ip_blocks():
    with pytest.raises(ValidationError) as info:
        load_documents(_policy("bad", "{rules: [{from: [{source: {remoteIpBlocks: [nope]}}], "
                                      "when: [{key: remote.ip, values: [also-not]}]}]}"), "p.yaml")
    paths = {e.path for e in info.value.errors}
    assert paths == {"spec.rules[0].from[0].source.remoteIpBlocks[0]", "spec.rules[0].when[0].values[0]"}


def test_evaluator_reads_the_client_address():
    from meshcore.authz import Request, decide

    [policy] = load_documents(_policy("edge", "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: "
                                              "['203.0.113.0/24']}}]}]}"), "p.yaml")
    labels = {"app": "ingress-gateway"}
    assert not decide([policy], labels, "default", Request(source_ip="10.0.0.1", remote_ip="203.0.113.9")).allowed
    assert decide([policy], labels, "default", Request(source_ip="10.0.0.1", remote_ip="198.51.100.1")).allowed
    assert not decide([policy], labels, "default", Request(source_ip="203.0.113.9")).allowed  # no XFF: the peer


def test_analyze_flags_remote_ip_blocks_on_sidecars():
    from meshcore.analyze import analyze
    from tests.xds.test_build_golden import CATALOG
    from meshcore.catalog.files import FileCatalogSource

    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    edge = "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: ['203.0.113.0/24']}}]}]}"
    docs = load_documents(_policy("mesh-edge", edge, "meshcore-system")
                          + _policy("gw-edge", "{selector: {matchLabels: {app: ingress-gateway}}, " + edge[1:]), "p.yaml")
    found = [(f.code, f.resource, f.severity) for f in analyze(docs, catalog) if f.code == "MC0303"]
    assert found == [("MC0303", "AuthorizationPolicy/meshcore-system/mesh-edge", "error")]


def test_the_docs_default_deny_opens_the_gateway_for_its_clients():
    from tests.authz.test_check import _doc_policies

    docs = {r.name: r for r in _doc_policies()}
    snap = _snapshot(GATEWAY)
    resources = [*snap.resources, docs["deny-all"], docs["gateway-clients"]]
    built = build_proxy(MeshSnapshot.build(snap.catalog, resources), ProxyInfo(node="gateway", secrets_dir="/s"))
    allow = _stage(built, "gateway:127.0.0.1:8081", pf.AUTHZ_ALLOW)
    assert list(allow.rbac.rules.policies) == ["default/gateway-clients[0]"]


def test_analyze_reads_gateway_ports_as_its_listeners():
    from meshcore.analyze import analyze

    snap = _snapshot(GATEWAY)
    docs = load_documents(_policy("gw-ports", "{selector: {matchLabels: {app: ingress-gateway}}, rules: "
                                              "[{to: [{operation: {ports: ['8081']}}]}, {to: [{operation: {ports: ['1']}}]}]}"),
                          "p.yaml")
    found = [(f.code, f.path) for f in analyze([*snap.resources, *docs], snap.catalog) if f.code == "MC0301"]
    assert found == [("MC0301", "spec.rules[1].to[0].operation.ports")]  # 8081 is the Gateway server's port


def test_authz_check_decides_at_the_gateway_per_listener():
    from meshcore.authz import CheckQuery, check

    text = GATEWAY + _policy("edge", "{selector: {matchLabels: {app: ingress-gateway}}, action: DENY, rules: "
                                     "[{from: [{source: {remoteIpBlocks: ['203.0.113.0/24']}}]}, "
                                     "{to: [{operation: {ports: ['8081'], paths: ['/admin*']}}]}]}")
    snap = _snapshot(text)

    def verdicts(**kw) -> dict:
        out = check(snap, CheckQuery(destination="ingress-gateway", **kw))
        return {r["port"]: r["allowed"] for r in out["results"]}

    assert verdicts(path="/productpage") == {8080: True, 8081: True}
    assert verdicts(path="/productpage", remote_ip="203.0.113.5") == {8080: False, 8081: False}
    assert verdicts(path="/admin") == {8080: True, 8081: False}  # ports name the gateway's listener port
