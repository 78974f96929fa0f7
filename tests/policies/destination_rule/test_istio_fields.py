"""DestinationRule fields of Istio's schema beyond limits and ejection (issue 17): validation with Istio's types and
ranges (errors at the field path), Envoy's config for each (HTTP/2 upgrade and settings, hash algorithms, cookie
attributes, warmup, zone-aware minimum, local-origin outlier detection, retry budget, PROXY protocol, tunnel,
TCP idle timeout), the workload selector, and Sidecar inboundConnectionPool."""

from __future__ import annotations

import json

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshcore import naming
from meshcore.errors import ValidationError
from meshcore.policies.destination_rule.clusters import HTTP_PROTOCOL_OPTIONS, route_hash_policies
from meshcore.policies.destination_rule.spec import spec_of
from meshcore.resources.loader import load_documents, validate_set
from meshcore.xds.generate import CLUSTER, ENDPOINT, LISTENER

from .._catalog import build, free_port, write_catalog

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: api\n"


def _errors(policy_yaml: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + "  trafficPolicy:\n" + policy_yaml, "dr.yaml")
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize("policy, path, words", [
    ("    loadBalancer: {simple: RANDOM, warmup: {duration: 1m}}", "spec.trafficPolicy.loadBalancer.warmup",
     "ROUND_ROBIN and LEAST_REQUEST"),
    ("    loadBalancer: {consistentHash: {useSourceIp: true}, warmupDurationSecs: 5s}",
     "spec.trafficPolicy.loadBalancer.warmupDurationSecs", "not consistentHash"),
    ("    loadBalancer: {warmup: {duration: 1m}, warmupDurationSecs: 5s}",
     "spec.trafficPolicy.loadBalancer.warmupDurationSecs", "write only warmup"),
    ("    loadBalancer: {warmup: {minimumPercent: 5}}", "spec.trafficPolicy.loadBalancer.warmup.duration", "required"),
    ("    loadBalancer: {warmup: {duration: 1m, minimumPercent: 120}}",
     "spec.trafficPolicy.loadBalancer.warmup.minimumPercent", "0-100"),
    ("    loadBalancer: {warmup: {duration: 1m, aggression: 0}}", "spec.trafficPolicy.loadBalancer.warmup.aggression",
     "greater than 0"),
    ("    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "prime"),
    ("    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}, ringHash: {}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev", "not both"),
    ("    loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 9000000}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "8388608"),
    ("    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}, minimumRingSize: 10}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "maglev.tableSize"),
    ("    loadBalancer: {consistentHash: {httpCookie: {name: s, attributes: [{name: 'a b'}]}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[0].name", "cookie attribute"),
    ("    loadBalancer: {localityLbSetting: {}, zoneAwareLbSetting: {}}",
     "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting", "newer name"),
    ("    loadBalancer: {zoneAwareLbSetting: {minClusterSize: 0}}",
     "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.minClusterSize", "1-"),
    ("    loadBalancer: {zoneAwareLbSetting: {failover: [{from: dc1, to: dc1}]}}",
     "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[0].to", "to itself"),
    ("    connectionPool: {http: {useClientProtocol: true, h2UpgradePolicy: UPGRADE}}",
     "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "useClientProtocol"),
    ("    connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE, maxConcurrentStreams: 5}}",
     "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams", "DO_NOT_UPGRADE"),
    ("    connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}",
     "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("    connectionPool: {http: {http2KeepAlive: {timeout: 5s}}}",
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval", "give interval"),
    ("    connectionPool: {http: {maxConcurrentStreams: 0}}",
     "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams", "1-"),
    ("    connectionPool: {tcp: {idleTimeout: 5}}", "spec.trafficPolicy.connectionPool.tcp.idleTimeout", '"5s"'),
    ("    outlierDetection: {consecutiveErrors: 5, consecutiveGatewayErrors: 3}",
     "spec.trafficPolicy.outlierDetection.consecutiveErrors", "which is also set"),
    ("    outlierDetection: {consecutiveLocalOriginFailures: 5}",
     "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors: true"),
    ("    outlierDetection: {minHealthPercent: 101}", "spec.trafficPolicy.outlierDetection.minHealthPercent", "0-100"),
    ("    outlierDetection: {outlierDetectionHttpErrorCodes: [500]}",
     "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes", "consecutive5xxErrors"),
    ("    retryBudget: {percent: 150}", "spec.trafficPolicy.retryBudget.percent", "0-100"),
    ("    retryBudget: {budgetInterval: 10s}", "spec.trafficPolicy.retryBudget.budgetInterval", "no interval"),
    ("    retryBudget: {}\n    connectionPool: {http: {maxRetries: 3}}", "spec.trafficPolicy.retryBudget",
     "maxRetries"),
    ("    proxyProtocol: {version: V3}", "spec.trafficPolicy.proxyProtocol.version", "V1"),
    ("    tunnel: {targetHost: db}", "spec.trafficPolicy.tunnel.targetPort", "required"),
    ("    tunnel: {protocol: GET, targetHost: db, targetPort: 5432}", "spec.trafficPolicy.tunnel.protocol", "CONNECT"),
])
def test_each_field_is_checked_at_its_path(policy, path, words):
    errors = _errors(policy + "\n")
    assert path in errors, errors
    assert words in errors[path], errors[path]


def test_port_level_locality_is_checked_as_the_levels():
    at = "spec.trafficPolicy.portLevelSettings[0].loadBalancer"
    errors = _errors("    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {zoneAwareLbSetting: "
                     "{minClusterSize: 0}}\n")
    assert "1-" in errors[f"{at}.zoneAwareLbSetting.minClusterSize"]
    errors = _errors("    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {zoneAwareLbSetting: "
                     "{distribute: [{from: dc1, to: {dc1: 100}}], failover: [{from: dc1, to: dc2}]}}\n")
    assert "cannot both be set" in errors[f"{at}.zoneAwareLbSetting.distribute"]
    errors = _errors("    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {zoneAwareLbSetting: {}, "
                     "localityLbSetting: {}}\n")
    assert "newer name" in errors[f"{at}.zoneAwareLbSetting"]


def test_workload_selector_values_and_duplicates():
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + "  workloadSelector: {matchLabels: {app: 'web*'}}\n", "dr.yaml")
    assert "wildcards" in str(info.value)
    two = load_documents(
        (HEAD + "  workloadSelector: {matchLabels: {app: web}}\n") + "---\n"
        + HEAD.replace("{name: r}", "{name: r2}") + "  workloadSelector: {matchLabels: {app: web}}\n"
        + "---\n" + HEAD.replace("{name: r}", "{name: general}"), "dr.yaml")
    errors = validate_set(two)
    assert [(e.path, "already selects" in e.message) for e in errors] == [("spec.workloadSelector", True)]


def test_proxy_protocol_and_tunnel_only_towards_service_entry_hosts():
    docs = load_documents(HEAD + "  trafficPolicy: {proxyProtocol: {}}\n  subsets:\n  - name: v1\n"
                          "    trafficPolicy: {tunnel: {targetHost: db, targetPort: 1}}\n", "dr.yaml")
    errors = {e.path: e.message for e in validate_set(docs)}
    assert "ServiceEntry" in errors["spec.trafficPolicy.proxyProtocol"]
    assert "ServiceEntry" in errors["spec.subsets[0].trafficPolicy.tunnel"]
    entry = ("apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: e}\nspec:\n"
             "  hosts: [proxy.example.com]\n  resolution: DNS\n  ports: [{number: 3128, name: tcp, protocol: TCP}]\n"
             "---\n")
    ok = load_documents(entry + HEAD.replace("host: api", "host: proxy.example.com")
                        + "  trafficPolicy: {proxyProtocol: {version: V2}, tunnel: {targetHost: db, targetPort: 1}}\n",
                        "dr.yaml")
    assert validate_set(ok) == []


def test_cookie_attributes_reach_the_hash_policy():
    (rule,) = load_documents(HEAD + "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
                                    "        httpCookie: {name: s, ttl: 0s, attributes: [{name: SameSite, value: Strict},"
                                    " {name: Secure}]}\n", "dr.yaml")
    [hp] = route_hash_policies(spec_of(rule).effective_policy())
    assert [(a.name, a.value) for a in hp.cookie.attributes] == [("SameSite", "Strict"), ("Secure", "")]


def _catalog(tmp_path, upstream: str, protocol: str | None = None) -> None:
    write_catalog(tmp_path, [{"name": "web"}, {"name": "api", **({"protocol": protocol} if protocol else {})}])
    web = tmp_path / "n1" / "web.json"
    definition = json.loads(web.read_text())
    definition["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"] = [
        {"destination_name": upstream, "local_bind_port": free_port()}]
    web.write_text(json.dumps(definition))


PROXY_ENTRY = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: proxy}
spec:
  hosts: [proxy.example.com]
  resolution: STATIC
  ports: [{number: 3128, name: tcp, protocol: TCP}]
  endpoints: [{address: 192.0.2.30, labels: {version: v1}}, {address: 192.0.2.31, labels: {version: v2}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: proxy}
spec:
  host: proxy.example.com
  trafficPolicy:
    tunnel: {targetHost: db.internal, targetPort: 5432}
    connectionPool: {tcp: {idleTimeout: 90s}}
    proxyProtocol: {version: V2}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {tunnel: {protocol: POST, targetHost: "2001:db8::5", targetPort: 5432},
     connectionPool: {tcp: {idleTimeout: 30s}}}}
  - {name: v2, labels: {version: v2}}
"""


def _tcp_proxies(built: dict, host: str) -> list[tcp_proxy_pb2.TcpProxy]:
    out = []
    for listener in built[LISTENER]:
        if listener.name.startswith(f"outbound:{host}:"):
            for chain in listener.filter_chains:
                for f in chain.filters:
                    proxy = tcp_proxy_pb2.TcpProxy()
                    if f.typed_config.Unpack(proxy):
                        out.append(proxy)
    return out


def test_tunnel_idle_timeout_and_proxy_protocol_towards_a_proxy_outside_the_mesh(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    built = build(tmp_path, PROXY_ENTRY, secrets_dir=str(tmp_path))
    [proxy] = _tcp_proxies(built, "proxy.example.com")
    assert proxy.tunneling_config.hostname == "db.internal:5432" and not proxy.tunneling_config.use_post
    assert proxy.idle_timeout.seconds == 90
    [cl] = [c for c in built[CLUSTER] if c.name == naming.upstream_cluster("proxy.example.com", "web")]
    assert cl.transport_socket.name == "envoy.transport_sockets.upstream_proxy_protocol"
    from tests.traffic.test_build import _validate_with_envoy

    for name in ("svid:web", "svid:api"):
        (tmp_path / naming.secret_file(name)).write_text("resources: []\n")
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_tcp_route_to_a_subset_tunnels_as_the_subset_and_mixed_tunnels_are_refused(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    vs = ("---\napiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: proxy}\nspec:\n"
          "  hosts: [proxy.example.com]\n  tcp:\n  - route: ROUTE\n")
    built = build(tmp_path, PROXY_ENTRY + vs.replace("ROUTE", "[{destination: {host: proxy.example.com, subset: v1}}]"))
    [proxy] = _tcp_proxies(built, "proxy.example.com")
    assert proxy.tunneling_config.hostname == "[2001:db8::5]:5432" and proxy.tunneling_config.use_post
    assert proxy.idle_timeout.seconds == 30 and proxy.cluster.endswith("|v1")
    mixed = "[{destination: {host: proxy.example.com, subset: v1}, weight: 50}, {destination: {host: proxy.example.com, subset: v2}, weight: 50}]"
    from meshcore.errors import SnapshotInvalid

    with pytest.raises(SnapshotInvalid, match="tunnel differently"):
        build(tmp_path, PROXY_ENTRY + vs.replace("ROUTE", mixed))


def test_the_workload_selector_picks_the_rule_per_calling_workload(tmp_path):
    _catalog(tmp_path, "api")
    rules = (HEAD.replace("{name: r}", "{name: general, namespace: default}") + "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
             + "---\n" + HEAD.replace("{name: r}", "{name: web-only, namespace: default}")
             + "  workloadSelector: {matchLabels: {app: web}}\n  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n")
    built = build(tmp_path, rules)
    [cl] = [c for c in built[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    assert cl.lb_policy == cl.LEAST_REQUEST
    other = build(tmp_path, rules.replace("{app: web}", "{app: other}"))
    [cl] = [c for c in other[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    assert cl.lb_policy == cl.RANDOM
    elsewhere = build(tmp_path, rules.replace("web-only, namespace: default", "web-only, namespace: shop"))
    [cl] = [c for c in elsewhere[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    assert cl.lb_policy == cl.RANDOM, "a selector picks workloads of the rule's own namespace only (as Istio)"


def test_use_client_protocol_lets_the_pool_name_the_protocol(tmp_path):
    _catalog(tmp_path, "api")
    built = build(tmp_path, HEAD + "  trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}\n")
    [cl] = [c for c in built[CLUSTER] if c.name == naming.upstream_cluster("api", "web")]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cl.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    assert options.WhichOneof("upstream_protocol_options") == "use_downstream_protocol_config"
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    tls = tls_pb2.UpstreamTlsContext()
    cl.transport_socket.typed_config.Unpack(tls)
    assert list(tls.common_tls_context.alpn_protocols) == []  # each pool offers its own protocol


def test_zone_aware_min_cluster_size_keeps_every_endpoint_at_priority_0_below_it(tmp_path):
    _catalog(tmp_path, "api")
    policy = "  trafficPolicy: {loadBalancer: {zoneAwareLbSetting: {enabled: true, minClusterSize: MIN}}}\n"

    def priorities(minimum: int) -> set[int]:
        built = build(tmp_path, HEAD + policy.replace("MIN", str(minimum)))
        [cla] = [c for c in built[ENDPOINT] if c.cluster_name == naming.upstream_endpoints("api", None)]
        return {g.priority for g in cla.endpoints}, built

    assert priorities(1)[0] == {0}
    below, _ = priorities(2)  # one api endpoint in dc1: locality preference off (no ranking at all)
    assert below == {0}


INBOUND = """apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {name: api, namespace: default}
spec:
  workloadSelector: {labels: {app: api}}
  inboundConnectionPool:
    tcp: {maxConnections: 3, idleTimeout: 2m}
    http: {http1MaxPendingRequests: 1, h2UpgradePolicy: UPGRADE}
"""


def test_sidecar_inbound_connection_pool_limits_the_local_app(tmp_path):
    _catalog(tmp_path, "api", protocol="tcp")
    built = build(tmp_path, INBOUND)
    [app] = [c for c in built[CLUSTER] if c.name == naming.local_app_cluster("api-v1")]
    [t] = app.circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value) == (3, 1)
    [web] = [c for c in built[CLUSTER] if c.name == naming.local_app_cluster("web-v1")]
    assert not web.HasField("circuit_breakers")
    [listener] = [x for x in built[LISTENER] if x.name == naming.inbound_listener("api-v1")]
    proxies = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            proxy = tcp_proxy_pb2.TcpProxy()
            if f.typed_config.Unpack(proxy):
                proxies.append(proxy)
    assert proxies and all(p.idle_timeout.seconds == 120 for p in proxies)
    with pytest.raises(ValidationError) as info:
        load_documents(INBOUND.replace("maxConnections: 3", "maxConnections: 0"), "s.yaml")
    assert "spec.inboundConnectionPool.tcp.maxConnections" in str(info.value)


def test_tcp_idle_timeout_on_a_mesh_tcp_upstream(tmp_path):
    _catalog(tmp_path, "api", protocol="tcp")
    built = build(tmp_path, HEAD + "  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 0s}}}\n  subsets:\n"
                               "  - {name: v1, labels: {version: v1}}\n")
    [proxy] = _tcp_proxies(built, "api")
    assert proxy.HasField("idle_timeout") and proxy.idle_timeout.ToNanoseconds() == 0  # 0s: never (Istio's)
    untouched = build(tmp_path, HEAD + "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 5}}}\n")
    [proxy] = _tcp_proxies(untouched, "api")
    assert not proxy.HasField("idle_timeout")  # Envoy's default (1 h) stays


def test_simple_unspecified_is_the_mesh_default_and_passthrough_says_why():
    (rule,) = load_documents(HEAD + "  trafficPolicy: {loadBalancer: {simple: UNSPECIFIED, warmup: {duration: 1m}}}\n",
                             "dr.yaml")
    assert spec_of(rule).effective_policy().load_balancer.simple is None
    errors = _errors("    loadBalancer: {simple: PASSTHROUGH}\n")
    assert "original destination" in errors["spec.trafficPolicy.loadBalancer.simple"]


def test_http2_settings_towards_an_http1_service_entry_say_so():
    entry = ("apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: e}\nspec:\n"
             "  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 80, name: http, protocol: HTTP}]\n---\n")
    rule = HEAD.replace("host: api", "host: api.example.com") + "  trafficPolicy:\n    portLevelSettings:\n" \
        "    - port: {number: 80}\n      connectionPool: {http: {http2KeepAlive: {interval: 5s}}}\n"
    errors = {e.path: e.message for e in validate_set(load_documents(entry + rule, "dr.yaml"))}
    assert "HTTP/1.1" in errors["spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2KeepAlive"]
    upgraded = rule.replace("{http2KeepAlive:", "{h2UpgradePolicy: UPGRADE, http2KeepAlive:")
    assert validate_set(load_documents(entry + upgraded, "dr.yaml")) == []
