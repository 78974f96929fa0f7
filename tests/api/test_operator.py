"""The operator API's contract types: JSON round trips, checked decoding with field paths, optional keys."""

from __future__ import annotations

import pytest

from meshcore.api.operator import (
    ApplyRequest,
    ApplyResponse,
    ApplyResult,
    ControlPlaneStatus,
    DeleteRequest,
    GatewayStatus,
    ProxyStatus,
    ResourceFile,
    ResourceQuery,
    ServiceStatus,
    StatusResponse,
    TokenResponse,
    resolve_kind,
)
from meshcore.controlplane.dashboard_api import scrape_target
from meshcore.errors import BadRequest

STATUS = StatusResponse(
    control_plane=ControlPlaneStatus(xds="127.0.0.1:15012", http="http://127.0.0.1:15000", trust_domain="td"),
    proxies=(ProxyStatus(node="n1", admin="127.0.0.1:19000", connected=True, synced=True, version="abc",
                         services=(ServiceStatus("web", "web-1", "spiffe://td/ns/default/sa/web", True, "10.0.0.1:21000"),),
                         gateways=(GatewayStatus("gw", "gw-1", "spiffe://td/ns/default/sa/gw", True, "ingress",
                                                 ("0.0.0.0:8080",)),)),))


def test_status_round_trips_and_keeps_the_wire_shape():
    data = STATUS.to_json()
    assert StatusResponse.from_json(data) == STATUS
    assert "https" not in data["control_plane"]  # only when the operator API also serves TLS
    assert data["proxies"][0]["gateways"][0]["listeners"] == ["0.0.0.0:8080"]
    assert set(data["proxies"][0]["services"][0]) == {"name", "id", "spiffe_id", "healthy", "inbound"}


def test_decoding_names_the_field_that_does_not_fit():
    data = STATUS.to_json()
    data["proxies"][0]["services"][0]["healthy"] = "yes"
    with pytest.raises(BadRequest, match=r"status\.proxies\[0\]\.services\[0\]\.healthy: expected a boolean"):
        StatusResponse.from_json(data, "status")
    with pytest.raises(BadRequest, match="'control_plane' is missing"):
        StatusResponse.from_json({"proxies": []})
    with pytest.raises(BadRequest, match=r"body\.files\[0\]\.content: expected a string, got a number"):
        ApplyRequest.from_json({"files": [{"name": "a.yaml", "content": 7}]})
    with pytest.raises(BadRequest, match=r"body\.ttl_seconds: expected an integer, got a boolean"):
        TokenResponse.from_json({"node": "n", "token": "t", "ttl_seconds": True, "node_spiffe_id": "x"})


def test_requests_carry_only_what_is_set():
    assert ApplyRequest(files=(ResourceFile("a.yaml", "x"),)).to_json() == {"files": [{"name": "a.yaml",
                                                                                       "content": "x"}]}
    assert DeleteRequest(keys=("VirtualService/default/r",)).to_json() == {"keys": ["VirtualService/default/r"]}
    assert ApplyResponse(applied=(ApplyResult("a", "created"),)).to_json() == {
        "applied": [{"resource": "a", "result": "created"}]}
    assert ApplyResponse(valid=("a",), dry_run=True).to_json() == {"applied": [], "valid": ["a"], "dry_run": True}
    with pytest.raises(BadRequest, match='body needs "files"'):
        ApplyRequest.from_json({}).checked()
    with pytest.raises(BadRequest, match="must be Kind/namespace/name"):
        DeleteRequest(keys=("nope",)).key_parts()
    assert ResourceQuery(kind="vs").to_query() == {"kind": "vs"}


def test_resolve_kind_takes_plurals_and_any_case():
    kinds = ["VirtualService", "DestinationRule"]
    assert resolve_kind("virtualservices", kinds) == "VirtualService"
    assert resolve_kind("DESTINATIONRULE", kinds) == "DestinationRule"
    with pytest.raises(BadRequest, match="unknown kind 'vs'; known kinds: VirtualService, DestinationRule"):
        resolve_kind("vs", kinds)


def test_the_collector_sees_a_narrow_view_of_each_proxy():
    target = scrape_target(STATUS.proxies[0])
    assert target.url == "http://127.0.0.1:19000/stats/prometheus"
    assert target.instances == (("web-1", "web"),)  # gateways have no inbound listener to read
    assert target.heard_from and target.in_sync
    assert not scrape_target(ProxyStatus(node="n2", error="bad")).heard_from


# --- the feature endpoints' contracts (canaries, federation, operator certificates, CA, alerts) -----------


def test_canary_request_accepts_the_cli_spellings_and_names_a_bad_step():
    from meshcore.api.operator import CanaryRequest

    assert CanaryRequest.from_json({"service": "reviews", "to": "v2", "steps": "10,50,100"}).steps == "10,50,100"
    req = CanaryRequest.from_json({"service": "reviews", "to": "v2", "from": "v1", "steps": [10, 50, 100],
                                   "interval": 30, "max_p99": "500ms", "min_requests": "5"})
    assert (req.stable, req.steps, req.interval, req.min_requests) == ("v1", (10, 50, 100), 30.0, "5")
    with pytest.raises(BadRequest, match=r"body\.steps\[1\]: expected an integer, got a string"):
        CanaryRequest.from_json({"service": "reviews", "to": "v2", "steps": [10, "x", 100]})
    with pytest.raises(BadRequest, match=r"body\.service: expected a string"):
        CanaryRequest.from_json({"service": 7, "to": "v2"})
    # what meshctl sends: "from" under its wire name, unset optional fields left out
    assert CanaryRequest(service="reviews", to="v2", stable="v1", steps="10,100").to_json() == {
        "service": "reviews", "to": "v2", "from": "v1", "steps": "10,100", "interval": "1m", "max_error_rate": "1%"}


def test_canary_status_round_trips_the_controllers_json():
    from meshcore.api.operator import CanaryStatus
    from meshcore.controlplane.canary import status_of
    from meshcore.traffic import canary as sm

    spec = sm.CanarySpec(service="reviews", canary="v2", stable="v1", steps=(25, 100), max_p99_ms=500.0)
    st = sm.start(spec, 1000.0)
    wire = status_of(st).to_json()
    assert wire == {k: v for k, v in st.to_dict().items()}  # the same JSON as the state machine's own
    assert CanaryStatus.from_json(wire) == status_of(st)
    assert CanaryStatus.from_json(wire).decisions[0].action == "start"


def test_federation_and_ca_shapes_keep_their_nulls():
    from meshcore.api.operator import CaState, FederatedDomain, RootInfo

    entry = FederatedDomain(trust_domain="other.example", roots=(RootInfo("CN=r", "ab", "2030-01-01T00:00:00Z"),),
                            bundle="PEM")
    assert entry.to_json()["imported_at"] is None and entry.to_json()["spiffe_sequence"] is None
    info = {"subject": "CN=x", "sha256": "ab", "not_before": "a", "not_after": "b"}
    state = {"trust_domain": "td", "mode": "generated", "key_type": "ec-p256", "phase": "idle",
             "roots": [{**info, "role": "current"}], "intermediate": info, "signer_key_id": "k", "bundle_sha256": "s",
             "started_at": None, "activated_at": None, "old_root_certificates": [], "nodes_without_bundle": [],
             "held": False}
    assert CaState.from_json(state).to_json() == state  # no forced_past unless a finish says so
    finished = {**state, "forced_past": []}
    assert CaState.from_json(finished).to_json() == finished
    with pytest.raises(BadRequest, match=r"ca\.roots\[0\]\.sha256: expected a string"):
        CaState.from_json({**state, "roots": [{**info, "sha256": 1}]}, "ca")


# --- tokens, health, dry runs, authorization ---------------------------------------------------------------


def test_token_listing_keeps_used_null_and_health_is_ok():
    from meshcore.api.operator import Health, JoinTokenInfo

    entry = {"id": "abcdef012345", "node": "n1", "created": "2026-01-01T00:00:00Z",
             "expires": "2026-01-01T01:00:00Z", "used": None, "state": "valid"}
    assert JoinTokenInfo.from_json(entry).to_json() == entry
    with pytest.raises(BadRequest, match=r"body\.used: expected a string, got a number"):
        JoinTokenInfo.from_json({**entry, "used": 5})
    assert Health().to_json() == {"ok": True}


def test_token_store_listing_fits_the_contract(tmp_path):
    from datetime import timedelta

    from meshcore.api.operator import JoinTokenInfo
    from meshcore.ca import JoinTokenStore

    store = JoinTokenStore(tmp_path / "join-tokens", b"k" * 32)
    store.create("n1", ttl=timedelta(hours=1))
    (info,) = [JoinTokenInfo.from_json(e) for e in store.list()]
    assert (info.node, info.state, info.used) == ("n1", "valid", None)
    store.close()


def test_dry_run_answer_checks_each_node_and_leaves_out_an_absent_note():
    from meshcore.api.operator import DryRunResponse, ProxyDiff

    wire = {"dry_run": True, "resources": [{"resource": "VirtualService/default/r", "result": "configured"}],
            "nodes": {"n1": {"added": ["cluster/c"], "removed": [], "changed": [], "diff": "--- a", "problems": []}}}
    answer = DryRunResponse.from_json(wire)
    assert answer.nodes["n1"] == ProxyDiff(added=("cluster/c",), diff="--- a")
    assert answer.to_json() == wire
    assert not answer.nodes["n1"].unchanged and ProxyDiff().unchanged
    assert ProxyDiff(note="x").to_json()["note"] == "x"
    with pytest.raises(BadRequest, match=r"body\.nodes\.n1\.added\[0\]: expected a string"):
        DryRunResponse.from_json({**wire, "nodes": {"n1": {"added": [1]}}})


def _authz_snapshot(*policies: str):
    from pathlib import Path

    from meshcore.catalog.files import FileCatalogSource
    from meshcore.resources import load_documents
    from meshcore.snapshot import MeshSnapshot

    catalog = FileCatalogSource(Path(__file__).resolve().parents[2] / "examples/bookinfo/consul.d").poll(None, 0).catalog
    return MeshSnapshot.build(catalog, [r for i, p in enumerate(policies) for r in load_documents(p, f"p{i}.yaml")])


DENY_PRODUCTPAGE = """
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-productpage, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
"""


def test_authz_check_answer_round_trips_with_its_from_key():
    from meshcore.api.operator import AuthzCheckQuery, AuthzCheckResponse
    from meshcore.authz import CheckQuery, check

    snap = _authz_snapshot(DENY_PRODUCTPAGE)
    answer = check(snap, CheckQuery(destination="details", source="productpage"))
    typed = AuthzCheckResponse.from_json(answer)
    assert typed.to_json() == answer  # the evaluator's JSON, unchanged on the wire
    assert typed.caller.service == "productpage" and typed.results[0].instances == ("details-v1",)
    assert not typed.allowed and typed.results[0].policy == "default/no-productpage"
    plaintext = AuthzCheckResponse.from_json(check(snap, CheckQuery(destination="details")))
    assert plaintext.caller.principal is None and plaintext.allowed
    assert AuthzCheckQuery(to="api", source="web", headers=(("x-env", "prod"),)).to_query() == [
        ("to", "api"), ("method", "GET"), ("path", "/"), ("from", "web"), ("header", "x-env=prod")]
    with pytest.raises(BadRequest, match=r"body\.results\[0\]\.port: expected an integer"):
        AuthzCheckResponse.from_json({**answer, "results": [{**answer["results"][0], "port": "80"}]})


def test_authz_dry_run_answer_round_trips_and_meshctl_adds_only_its_counts():
    import dataclasses
    from collections import Counter

    from meshcore.api.operator import AuthzDryRunRequest, AuthzDryRunResponse, AuthzObservedCall
    from meshcore.authz.dry_run import ObservedCall, dry_run
    from meshcore.resources.loader import load_documents

    snap = _authz_snapshot()
    deny = load_documents(DENY_PRODUCTPAGE, "p.yaml")
    call = ObservedCall(service="details", source_principal="cluster.local/ns/default/sa/productpage",
                        method="GET", path="/details/0")
    answer = dry_run(snap, deny, Counter({call: 3}))
    typed = AuthzDryRunResponse.from_json(answer)
    assert typed.to_json() == answer and "log_files" not in typed.to_json()
    assert typed.would_deny[0].count == 3 and typed.would_deny[0].before.allowed
    shown = dataclasses.replace(typed, log_files=1, skipped_lines=0).to_json()
    assert (shown["log_files"], shown["skipped_lines"]) == (1, 0)
    body = AuthzDryRunRequest(calls=(AuthzObservedCall(**call.to_dict(), count=3),)).to_json()
    assert body["calls"][0] == {**call.to_dict(), "count": 3}
    assert ObservedCall.from_dict(body["calls"][0]) == call  # what the control plane reads back
