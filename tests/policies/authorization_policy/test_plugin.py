"""The AuthorizationPolicy plugin: which RBAC rules land where, in what order, with which rules.

HTTP: constant RBAC filters in every inbound listener, the rules per route (RDS) on the inbound route's
virtual host; TCP: network RBAC filters in the listener. Behaviour against a running Envoy is in
``test_envoy_rbac.py``; these tests pin the structure.
"""

from __future__ import annotations

import textwrap

import pytest
from google.protobuf import json_format

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from meshcore.policies import PLUGINS
from meshcore.xds.generate import LISTENER, ROUTE
from meshcore.xds.generate.policy_filters import POLICY_FILTER_NAMES, per_filter_config
from meshcore.xds.validate import validate_snapshot

from .._catalog import build, write_catalog

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"
PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def ap(name: str, spec: str, namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"


@pytest.fixture
def catalog(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}, {"name": "api"}, {"name": "db", "protocol": "tcp"}])
    return tmp_path


def listener(built, name):
    return next(l for l in built[LISTENER] if l.name == name)


def http_filters(chain) -> list:
    hcm = hcm_pb2.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def route_rbac(built, instance_id: str) -> list[tuple[str, http_rbac_pb2.RBAC]]:
    """(filter name, RBAC) of every RBAC per-filter config on the instance's inbound route, in filter order."""
    [route] = [r for r in built[ROUTE] if r.name == f"inbound:{instance_id}"]
    [vhost] = route.virtual_hosts
    out = []
    for name in POLICY_FILTER_NAMES:
        if name not in vhost.typed_per_filter_config:
            continue
        per_route = per_filter_config(vhost.typed_per_filter_config[name], http_rbac_pb2.RBACPerRoute)
        if per_route is not None:
            out.append((name, per_route.rbac))
    return out


def rbac_summary(rbacs) -> list[tuple]:
    return [(name, rbac_pb2.RBAC.Action.Name(cfg.rules.action), cfg.rules_stat_prefix, sorted(cfg.rules.policies))
            for name, cfg in rbacs]


def rbac_of(built, instance_id: str) -> http_rbac_pb2.RBAC:
    [(_, cfg)] = route_rbac(built, instance_id)
    return cfg


def test_registered_after_peer_authentication():
    assert [name for name, _ in PLUGINS][:2] == ["PeerAuthentication", "AuthorizationPolicy"]


def test_policy_selecting_nothing_changes_nothing(catalog):
    plain = build(catalog)
    other = build(catalog, ap("elsewhere", "selector: {matchLabels: {app: nothing}}") +
                  ap("other-ns", "action: DENY\nrules: [{}]", namespace="shop"))
    for kind in (LISTENER, ROUTE):
        assert [json_format.MessageToDict(x) for x in plain[kind]] == [json_format.MessageToDict(x) for x in other[kind]]


def test_http_policies_never_change_the_listeners(catalog):
    """The regression behind this design: a listener update leaves open connections on the old filters."""
    plain = build(catalog, PERMISSIVE)
    with_policies = build(catalog, PERMISSIVE + ap("web", "selector: {matchLabels: {app: web}}\nrules: [{}]")
                          + ap("deny", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]")
                          + ap("audit", "action: AUDIT\nrules: [{}]"))
    http = [n for n in ("inbound:web-v1", "inbound:api-v1")]
    for name in http:
        assert listener(plain, name).SerializeToString(deterministic=True) == \
            listener(with_policies, name).SerializeToString(deterministic=True), name
        for chain in listener(plain, name).filter_chains:  # mtls and plaintext alike
            assert http_filters(chain) == [*POLICY_FILTER_NAMES, "envoy.filters.http.router"]
    # ... the routes carry the rules; TCP services keep network RBAC in the listener
    assert route_rbac(with_policies, "web-v1") and not route_rbac(plain, "web-v1")
    assert listener(plain, "inbound:db-v1") != listener(with_policies, "inbound:db-v1")


def test_listener_level_filters_enforce_nothing(catalog):
    built = build(catalog)
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener(built, "inbound:web-v1").filter_chains[0].filters[0].typed_config.Unpack(hcm)
    prefixes = []
    for f in hcm.http_filters[:3]:
        cfg = http_rbac_pb2.RBAC()
        assert f.typed_config.Unpack(cfg)
        assert not cfg.HasField("rules") and not cfg.HasField("shadow_rules")  # no engine: everything passes
        prefixes.append(cfg.rules_stat_prefix)
    assert prefixes == ["authz.audit.", "authz.deny.", "authz.allow."]


def test_rule_order_names_and_stat_prefixes(catalog):
    built = build(catalog, PERMISSIVE + ap("z-allow", "selector: {matchLabels: {app: web}}\nrules: [{}, {}]")
                  + ap("a-allow", "selector: {matchLabels: {app: web}}\nrules: [{to: [{operation: {methods: [GET]}}]}]")
                  + ap("b-deny", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin/*']}}]}]")
                  + ap("a-deny", "action: DENY\nrules: [{when: [{key: 'request.headers[x-block]', values: ['*']}]}]")
                  + ap("audit", "action: AUDIT\nrules: [{to: [{operation: {methods: [POST]}}]}]"))
    assert validate_snapshot("n1", built) == []
    web = listener(built, "inbound:web-v1")
    assert [c.name for c in web.filter_chains] == ["mtls", "plaintext"]
    for chain in web.filter_chains:  # both chains route to the same inbound route configuration
        hcm = hcm_pb2.HttpConnectionManager()
        chain.filters[0].typed_config.Unpack(hcm)
        assert hcm.rds.route_config_name == "inbound:web-v1"
    rbacs = route_rbac(built, "web-v1")
    assert rbac_summary(rbacs) == [
        ("meshcore.authz.audit", "LOG", "authz.audit.", ["default/audit[0]"]),
        ("meshcore.authz.deny", "DENY", "authz.deny.", ["default/a-deny[0]", "default/b-deny[0]"]),
        ("meshcore.authz.allow", "ALLOW", "authz.allow.",
         ["default/a-allow[0]", "default/z-allow[0]", "default/z-allow[1]"]),
    ]
    assert all(cfg.track_per_rule_stats for _, cfg in rbacs)
    # api: only the namespace-wide DENY and AUDIT policies, no ALLOW stage (no ALLOW policy selects it)
    assert [x[1] for x in rbac_summary(route_rbac(built, "api-v1"))] == ["LOG", "DENY"]
    # outbound routes and the gateway are not touched
    assert all(not vh.typed_per_filter_config for r in built[ROUTE] if not r.name.startswith("inbound:")
               for vh in r.virtual_hosts)


def test_allow_policy_without_rules_is_an_empty_allow_stage(catalog):
    built = build(catalog, ap("deny-all", "{}", namespace="meshcore-system"))
    for sid in ("web-v1", "api-v1"):
        [(name, cfg)] = route_rbac(built, sid)
        assert name == "meshcore.authz.allow"
        assert cfg.rules.action == rbac_pb2.RBAC.ALLOW and not cfg.rules.policies  # Envoy: denies everything
        assert cfg.HasField("rules")
    db = listener(built, "inbound:db-v1").filter_chains[0]
    assert [f.name for f in db.filters] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]


def test_matchers(catalog):
    built = build(catalog, ap("m", """
        selector: {matchLabels: {app: web}}
        rules:
        - from:
          - source: {principals: ["cluster.local/ns/default/sa/a", "cluster.local/ns/shop/*", "*/sa/b", "*"],
                     notNamespaces: ["test-*"], ipBlocks: ["10.1.2.3/8"]}
          to:
          - operation: {methods: ["GET"], paths: ["/api/*", "*.js", "/x"], hosts: ["web"], notPorts: ["1"]}
          when:
          - {key: "request.headers[X-Env]", values: ["prod"], notValues: ["*"]}
          - {key: source.ip, notValues: ["127.0.0.1"]}
        """))
    cfg = rbac_of(built, "web-v1")
    policy = json_format.MessageToDict(cfg.rules.policies["default/m[0]"])
    ids = policy["principals"][0]["andIds"]["ids"]
    assert ids[0]["orIds"]["ids"] == [
        {"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/default/sa/a"}}},
        {"authenticated": {"principalName": {"prefix": "spiffe://cluster.local/ns/shop/"}}},
        {"authenticated": {"principalName": {"suffix": "/sa/b"}}},
        {"authenticated": {"principalName": {"safeRegex": {"regex": ".+"}}}},
    ]
    assert ids[1] == {"notId": {"authenticated": {"principalName": {"safeRegex": {"regex": "spiffe://cluster\\.local/ns/test-[^/]*/.*"}}}}}
    assert ids[2] == {"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}
    assert ids[3] == {"notId": {"directRemoteIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}}}
    rules = policy["permissions"][0]["andRules"]["rules"]
    assert rules[0] == {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}
    assert rules[1]["orRules"]["rules"] == [{"urlPath": {"path": {"prefix": "/api/"}}},
                                           {"urlPath": {"path": {"suffix": ".js"}}},
                                           {"urlPath": {"path": {"exact": "/x"}}}]
    assert rules[2] == {"header": {"name": ":authority", "stringMatch": {"safeRegex": {"regex": "(?i)web(:[0-9]+)?"}}}}
    # notPorts ["1"] is decided for this listener (web's port is not 1): nothing sent to Envoy
    assert rules[3] == {"header": {"name": "x-env", "stringMatch": {"exact": "prod"}}}
    assert rules[4] == {"notRule": {"header": {"name": "x-env", "presentMatch": True}}}
    assert len(rules) == 5


def test_ports_are_resolved_per_listener(catalog):
    defs = write_catalog(catalog, [{"name": "web"}])  # rewrite web with known ports
    port = defs["web"]["port"]
    built = build(catalog, ap("ports", f"""
        selector: {{matchLabels: {{app: web}}}}
        rules:
        - to: [{{operation: {{ports: ["{port}"]}}}}]
        - to: [{{operation: {{ports: ["1"]}}}}]
        - to: [{{operation: {{ports: ["1"]}}}}, {{operation: {{methods: [PUT]}}}}]
        - when: [{{key: destination.port, notValues: ["{port}"]}}]
        """))
    cfg = rbac_of(built, "web-v1")
    # rule 1 and 3 can never match on web's listener: left out; rule 2 keeps only its PUT alternative
    assert sorted(cfg.rules.policies) == ["default/ports[0]", "default/ports[2]"]
    assert json_format.MessageToDict(cfg.rules.policies["default/ports[0]"]) == {
        "permissions": [{"any": True}], "principals": [{"any": True}]}
    assert json_format.MessageToDict(cfg.rules.policies["default/ports[2]"])["permissions"] == [
        {"header": {"name": ":method", "stringMatch": {"exact": "PUT"}}}]


def test_tcp_rules_follow_istio(catalog):
    built = build(catalog, PERMISSIVE + ap("allow", """
        selector: {matchLabels: {app: db}}
        rules:
        - {from: [{source: {principals: ["cluster.local/ns/default/sa/a"]}}], to: [{operation: {methods: [GET]}}]}
        - {from: [{source: {principals: ["cluster.local/ns/default/sa/b"]}}]}
        """) + ap("deny", """
        selector: {matchLabels: {app: db}}
        action: DENY
        rules:
        - from: [{source: {principals: ["cluster.local/ns/default/sa/c"]}}]
          to: [{operation: {paths: ["/admin"]}}]
          when: [{key: "request.headers[x]", values: ["1"]}]
        """))
    assert validate_snapshot("n1", built) == []
    db = listener(built, "inbound:db-v1")
    for chain in db.filter_chains:
        names = [f.name for f in chain.filters]
        assert names == ["envoy.filters.network.rbac"] * 2 + ["envoy.filters.network.tcp_proxy"]
        deny, allow = (network_rbac_pb2.RBAC(), network_rbac_pb2.RBAC())
        chain.filters[0].typed_config.Unpack(deny)
        chain.filters[1].typed_config.Unpack(allow)
        assert deny.stat_prefix == "tcp.inbound_db-v1.authz.deny.default.deny."
        assert allow.stat_prefix == "tcp.inbound_db-v1.authz.allow."
        assert sorted(allow.rules.policies) == ["default/allow[1]"]  # rule 0 used methods: dropped
        # the DENY rule keeps its source and loses path and header: it denies c on every connection
        assert json_format.MessageToDict(deny.rules.policies["default/deny[0]"]) == {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/default/sa/c"}}}],
        }


def test_build_is_deterministic_with_policies(catalog):
    text = ap("a", "selector: {matchLabels: {app: web}}\nrules: [{}, {to: [{operation: {methods: [GET]}}]}]")
    for kind in (LISTENER, ROUTE):
        one = [x.SerializeToString(deterministic=True) for x in build(catalog, text)[kind]]
        two = [x.SerializeToString(deterministic=True) for x in build(catalog, text)[kind]]
        assert one == two


def test_fails_closed_when_a_listener_lacks_the_policy_filters(catalog):
    """Rules sent per route to an HCM without the filters would not be enforced: the proxy keeps its last config."""
    from meshcore.errors import SnapshotInvalid
    from meshcore.policies import authorization_policy
    from meshcore.snapshot import ProxyInfo
    from meshcore.xds.generate import build_listeners, build_routes

    from .._catalog import snapshot

    snap = snapshot(catalog, ap("web", "selector: {matchLabels: {app: web}}\nrules: [{}]"))
    proxy = ProxyInfo(node="n1", secrets_dir="/s")
    resources = {LISTENER: build_listeners(snap, proxy), ROUTE: build_routes(snap, proxy)}
    authorization_policy.apply(snap, proxy, resources)  # as built: fine
    web = listener(resources, "inbound:web-v1")  # a draft: its HCM is still a message
    del web.filter_chains[0].filters[0].config.http_filters[:4]  # only the router left
    with pytest.raises(SnapshotInvalid, match="lacks the policy filters"):
        authorization_policy.apply(snap, proxy, resources)
