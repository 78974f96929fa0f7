"""The operator API served from an OperatorContext of plain parts (no daemon, no engine, no CA): the
contract types on the wire, the error map on every refusal."""

from __future__ import annotations

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
