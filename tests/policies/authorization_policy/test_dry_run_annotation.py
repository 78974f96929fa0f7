"""The dry-run annotation (``istio.io/dry-run`` or ``mesh.io/dry-run: "true"``): evaluated, counted, not enforced.

Envoy gets the policy's rules as ``shadow_rules`` of its stage (stats ``...rbac.policy.<ns>/<name>[i].shadow_*``);
``decide`` (``meshctl authz check``) reports what the dry-run policies would decide beside the real verdict.
"""

from __future__ import annotations

import pytest

from envoy.config.rbac.v3 import rbac_pb2

from meshcore.authz import Request, decide
from meshcore.errors import ValidationError
from meshcore.resources import load_documents
from meshcore.xds.generate.policy_filters import AUTHZ_ALLOW, AUTHZ_DENY

from .._catalog import build, write_catalog
from .test_plugin import ap, route_rbac


def dry(name: str, spec: str, key: str = "istio.io/dry-run", value: str = '"true"') -> str:
    doc = ap(name, spec)
    return doc.replace(f"metadata: {{name: {name}, namespace: default}}",
                       f"metadata: {{name: {name}, namespace: default, annotations: {{{key}: {value}}}}}")


@pytest.fixture
def catalog(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}, {"name": "db", "protocol": "tcp"}])
    return tmp_path


@pytest.mark.parametrize("key", ["istio.io/dry-run", "mesh.io/dry-run"])
def test_dry_run_deny_goes_to_shadow_rules_only(catalog, key):
    built = build(catalog, dry("deny-post", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]", key))
    [(name, cfg)] = route_rbac(built, "web-v1")
    assert name == AUTHZ_DENY
    assert not cfg.HasField("rules")  # nothing enforced
    assert cfg.shadow_rules.action == rbac_pb2.RBAC.DENY
    assert sorted(cfg.shadow_rules.policies) == ["default/deny-post[0]"]


def test_dry_run_allow_beside_an_enforced_allow(catalog):
    built = build(catalog, ap("allow-get", "rules: [{to: [{operation: {methods: [GET]}}]}]")
                  + dry("allow-nothing", "{}"))
    [(name, cfg)] = route_rbac(built, "web-v1")
    assert name == AUTHZ_ALLOW
    assert sorted(cfg.rules.policies) == ["default/allow-get[0]"]  # enforced as before
    assert cfg.shadow_rules.action == rbac_pb2.RBAC.ALLOW and not cfg.shadow_rules.policies  # would deny all


def test_false_is_enforced_and_other_values_are_refused(catalog):
    built = build(catalog, dry("deny-post", "action: DENY\nrules: [{}]", value='"false"'))
    [(_, cfg)] = route_rbac(built, "web-v1")
    assert cfg.HasField("rules") and not cfg.HasField("shadow_rules")
    with pytest.raises(ValidationError) as info:
        load_documents(dry("x", "{}", value="maybe"), "p.yaml")
    [err] = info.value.errors
    assert err.path == 'metadata.annotations["istio.io/dry-run"]' and "must be \"true\" or \"false\"" in err.message


def test_tcp_dry_run_is_a_shadow_only_network_filter(catalog):
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
    from meshcore.xds.generate import LISTENER

    built = build(catalog, dry("deny-all", "action: DENY\nrules: [{}]"))
    [lst] = [x for x in built[LISTENER] if x.name == "inbound:db-v1"]
    for chain in lst.filter_chains:
        rbacs = []
        for f in chain.filters:
            cfg = network_rbac_pb2.RBAC()
            if f.typed_config.Unpack(cfg):
                rbacs.append(cfg)
        [cfg] = rbacs
        assert not cfg.HasField("rules") and sorted(cfg.shadow_rules.policies) == ["default/deny-all[0]"]
        assert cfg.stat_prefix.endswith(".authz.deny.dry_run.")


def test_decide_reports_the_dry_run_verdict_without_enforcing_it():
    policies = load_documents(dry("deny-post", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]"),
                              "p.yaml")
    d = decide(policies, {"app": "web"}, "default", Request(method="POST", path="/", port=80))
    assert d.allowed and d.dry_run is not None and d.dry_run.startswith("would deny: denied by DENY policy default/deny-post")
    d = decide(policies, {"app": "web"}, "default", Request(method="GET", path="/", port=80))
    assert d.allowed and d.dry_run.startswith("would allow")
    assert decide([], {"app": "web"}, "default", Request(method="GET", path="/", port=80)).dry_run is None


def test_the_annotation_survives_a_store_round_trip(tmp_path):
    from meshcore.resources.dir_store import DirectoryStore

    [res] = load_documents(dry("deny-post", "action: DENY\nrules: [{}]"), "p.yaml")
    store = DirectoryStore(tmp_path / "store")
    store.apply([res])
    [back] = store.list()
    assert back.annotations == (("istio.io/dry-run", "true"),) and back.canonical_json() == res.canonical_json()
