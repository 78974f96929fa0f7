"""The operator API served from an OperatorContext of plain parts (no daemon, no engine, no CA): the
contract types on the wire, the error map on every refusal."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from meshcore.api.operator import ApplyRequest, ApplyResponse, ControlPlaneStatus, ResourceFile, StatusResponse
from meshcore.ca import generate_kek_file
from meshcore.controlplane._contexts import CaControl
from meshcore.controlplane._http import JsonServer
from meshcore.controlplane.operator_api import OperatorApi, OperatorContext
from meshcore.controlplane.operators import ADMIN, OperatorTokenStore
from meshcore.resources.dir_store import DirectoryStore

from ._api import call_api, empty_mesh

POLICY = """apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""


@pytest.fixture
def api(tmp_path):
    tokens = OperatorTokenStore(tmp_path / "operators.sealed", generate_kek_file(tmp_path / "kek"))
    mesh = empty_mesh()
    unused = CaControl(status=dict, rotate=lambda force: {}, finish=lambda force: {})
    ctx = OperatorContext(store=DirectoryStore(tmp_path / "resources"), mesh=mesh,
                          ca=SimpleNamespace(trust_domain="td"),  # type: ignore[arg-type] - only its name is read
                          ca_control=unused, tokens=SimpleNamespace(), operators=tokens,  # type: ignore[arg-type]
                          status=lambda: StatusResponse(ControlPlaneStatus(trust_domain="td")),
                          registry=CollectorRegistry())
    server = JsonServer(OperatorApi(ctx).router(), "127.0.0.1:0").start()
    plane = SimpleNamespace(addresses={"http": f"http://{server.address}"})
    try:
        yield plane, tokens.create("ops", ADMIN)
    finally:
        server.stop()


def test_apply_and_list_speak_the_contract_types(api):
    plane, token = api
    request = ApplyRequest(files=(ResourceFile("pa.yaml", POLICY),))
    status, body = call_api(plane, "POST", "/v1/resources", token, request.to_json())
    assert status == 200, body
    assert ApplyResponse.from_json(body).applied[0].result == "created"
    status, body = call_api(plane, "GET", "/v1/resources?kind=peerauthentications", token)
    assert status == 200 and [d["metadata"]["name"] for d in body] == ["default"]
    status, body = call_api(plane, "GET", "/v1/status", token)
    assert StatusResponse.from_json(body).control_plane.trust_domain == "td"


def test_an_istio_file_applies_as_written_and_reads_back_in_meshcores_spelling(api):
    plane, token = api
    istio = POLICY.replace("security.mesh.io/v1beta1", "security.istio.io/v1")
    assert "security.istio.io/v1\n" in istio
    status, body = call_api(plane, "POST", "/v1/resources", token,
                            ApplyRequest(files=(ResourceFile("pa.yaml", istio),)).to_json())
    assert status == 200 and ApplyResponse.from_json(body).applied[0].result == "created", body
    status, body = call_api(plane, "GET", "/v1/resources?kind=peerauthentications", token)
    assert [d["apiVersion"] for d in body] == ["security.mesh.io/v1beta1"]
    # the same resource in meshcore's spelling is no change
    status, body = call_api(plane, "POST", "/v1/resources", token,
                            ApplyRequest(files=(ResourceFile("pa.yaml", POLICY),)).to_json())
    assert ApplyResponse.from_json(body).applied[0].result == "unchanged", body


def test_refusals_come_from_the_error_map(api):
    plane, token = api
    assert call_api(plane, "GET", "/v1/resources?kind=vs", token)[0] == 400  # unknown kind: BadRequest
    status, body = call_api(plane, "POST", "/v1/resources", token, {"files": [{"name": "x", "content": 1}]})
    assert status == 400 and "body.files[0].content: expected a string" in body["error"]
    status, body = call_api(plane, "POST", "/v1/resources", token,
                            ApplyRequest(files=(ResourceFile("bad.yaml", "kind: Nope\n"),)).to_json())
    assert status == 422 and body["errors"][0]["source"] == "bad.yaml"  # ValidationError, with field errors
    assert call_api(plane, "POST", "/v1/resources/dry-run", token,
                    ApplyRequest(files=(ResourceFile("pa.yaml", POLICY),)).to_json())[0] == 503  # no snapshot yet
    assert call_api(plane, "GET", "/v1/status", "not-a-token")[0] == 401  # OperatorAuthError
    assert call_api(plane, "DELETE", "/v1/status", token)[0] == 405  # MethodNotAllowed


_BAD_BODIES = [5, "x", [], {"files": 5}, {"files": [5]}, {"files": [{"name": 1, "content": "x"}]},
               {"files": [{"name": "a.yaml", "content": ["x"]}]}, {"keys": "x"}, {"keys": [{"kind": 5}]},
               {"node": 5}, {"node": ["a"]}, {"ttl": 5}, {"finish": "yes"}, {"force": 1}, {"dry_run": "no"},
               {"logs": 5}, {"entries": {"a": 1}}]


@pytest.mark.parametrize("path", ["/v1/resources", "/v1/resources/delete", "/v1/resources/dry-run", "/v1/tokens",
                                  "/v1/authz/dry-run"])
def test_wrong_types_are_400_never_500(api, path):
    plane, token = api
    for body in _BAD_BODIES:
        status, answer = call_api(plane, "POST", path, token, body)
        assert status < 500, (path, body, answer)
        if status == 400 and not isinstance(body, dict):
            assert answer["error"].startswith("body: expected an object"), (path, body, answer)


def test_a_mistyped_field_is_named(api):
    plane, token = api
    status, answer = call_api(plane, "POST", "/v1/ca/rotate", token, {"finish": "yes"})
    assert (status, answer["error"]) == (400, "body.finish: expected a boolean, got a string")
    status, answer = call_api(plane, "POST", "/v1/resources", token, {"files": [{"name": "a.yaml", "content": 5}]})
    assert status == 400
    assert answer["error"] == "body.files[0].content: expected a string, got a number"


@pytest.mark.parametrize("node", ["x/../n2", "*", "n" * 300, "vm1\nforged", "VM1", "vm_1", "vm.example", ""])
def test_token_create_refuses_names_that_are_not_dns_labels(api, node):
    plane, token = api
    status, answer = call_api(plane, "POST", "/v1/tokens", token, {"node": node, "ttl": "1h"})
    assert status == 400, answer
    assert "node name" in answer["error"]


def test_negative_content_length_does_not_bypass_the_limit(api):
    """Finding: ``Content-Length: -1`` streamed a 12 MiB apply past the 4 MiB limit."""
    import socket

    plane, token = api
    host, port = plane.addresses["http"].removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(f"POST /v1/resources HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: -1\r\n\r\n".encode() + b'{"files": [')
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_hostile_yaml_is_422_at_once(api):
    """Finding: a deep document took 36 s and a 500; aliases were expanded (also by the read-only dry-run)."""
    import time

    plane, token = api
    head = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n"
    laughs = head + "a: &a [x, x]\nb: &b [*a, *a]\nspec: {rules: [{from: *b}]}\n"
    for path in ("/v1/resources", "/v1/resources/dry-run", "/v1/authz/dry-run"):
        for name, content in (("deep.yaml", head + "spec: " + "[" * 500_000), ("laughs.yaml", laughs)):
            started = time.monotonic()
            status, answer = call_api(plane, "POST", path, token, {"files": [{"name": name, "content": content}]})
            assert status == 422, (path, name, answer)
            assert time.monotonic() - started < 10
            text = json.dumps(answer)
            assert name in text and ("nests deeper than 64" in text or "anchor &a" in text), answer
