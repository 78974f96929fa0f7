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
