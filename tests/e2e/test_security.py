"""End to end: what one VM's agent cannot do with its own node identity, against a running mesh.

The attacker holds node n1's real key and certificate (read from n1's agent state, as root on that
VM could) and talks to the real control plane: the agent API over mTLS and the xDS server over
gRPC mTLS. It can get the identities of services registered on n1, but not another node's
workload identity nor another node's certificate, and it cannot read another node's Envoy
configuration over ADS. Join tokens are single-use and bound to one node. (Mesh-wide default deny
is covered by test_authz.py's deny-all test.)
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshcore import naming
from meshcore.agent.client import AgentClient, AgentRequestError
from meshcore.ca import make_csr, new_private_key
from meshcore.xds.generate import CLUSTER, LISTENER

from meshcore.demo.launcher import http_get, wait_until

from ._topology import running_mesh
from .test_authz import _meshctl

TD = naming.DEFAULT_TRUST_DOMAIN


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("security-mesh")
    with running_mesh(state, artifacts="e2e-security-logs", leaf_ttl="1h", agent_refresh="2s",
                      access_log=str(state / "logs" / "access-{node}.log")) as m:
        yield m


def _node_files(mesh, node: str):
    d = mesh.state / "nodes" / node
    return d / "node.crt", d / "node.key"


def _as_node(mesh, node: str) -> AgentClient:
    """An agent API client holding ``node``'s real identity (what root on that VM has)."""
    cert, key = _node_files(mesh, node)
    return AgentClient(mesh.cp_info["api"], mesh.cp_info["ca_file"], cert_file=cert, key_file=key)


def _workload(service: str) -> str:
    return naming.workload_spiffe_id(TD, naming.DEFAULT_NAMESPACE, service)


def test_node_gets_only_its_own_workload_identities(mesh):
    n1 = _as_node(mesh, "n1")
    assert {s.name for s in n1.services().services} == {"productpage", "reviews"}  # only what runs on n1
    key = new_private_key()
    own = n1.sign(make_csr(key, _workload("productpage")))
    assert own.spiffe_id == _workload("productpage")
    for other in ("ratings", "details"):  # registered on n3 and n2 only
        with pytest.raises(AgentRequestError) as info:
            n1.sign(make_csr(new_private_key(), _workload(other)))
        assert info.value.status == 403
        assert "not the identity of any service registered on node n1" in info.value.reason
    for sid in (naming.node_spiffe_id(TD, "n2"), naming.control_plane_spiffe_id(TD),
                "spiffe://cluster.local/meshcore/operator/admin"):
        with pytest.raises(AgentRequestError) as info:
            n1.sign(make_csr(new_private_key(), sid))
        assert info.value.status == 403, sid
    with pytest.raises(AgentRequestError) as info:
        n1.renew_node(make_csr(new_private_key(), naming.node_spiffe_id(TD, "n2")))
    assert info.value.status == 403 and "may only renew" in info.value.reason


def test_node_certificate_cannot_read_another_nodes_config_over_ads(mesh):
    cert, key = _node_files(mesh, "n1")
    creds = grpc.ssl_channel_credentials(root_certificates=open(mesh.cp_info["ca_file"], "rb").read(),
                                         private_key=key.read_bytes(), certificate_chain=cert.read_bytes())

    def first_response(node_id: str):
        with grpc.secure_channel(mesh.cp_info["xds"], creds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id, cluster="attack"), type_url=CLUSTER)
            stream = stub.StreamAggregatedResources(iter([request]), timeout=20)
            return next(iter(stream))

    with pytest.raises(grpc.RpcError) as info:
        first_response("n2")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "n1" in info.value.details() and "n2" in info.value.details()
    # without a client certificate the TLS handshake itself fails
    anonymous = grpc.ssl_channel_credentials(root_certificates=open(mesh.cp_info["ca_file"], "rb").read())
    with grpc.secure_channel(mesh.cp_info["xds"], anonymous) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.StreamAggregatedResources(iter([discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id="n2"), type_url=LISTENER)]), timeout=20)))
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED)


def _join(mesh, node: str, token: str) -> tuple[int, dict]:
    key = new_private_key()
    body = {"node": node, "token": token, "csr": make_csr(key, naming.node_spiffe_id(TD, node))}
    ctx = ssl.create_default_context(cafile=mesh.cp_info["ca_file"])
    req = urllib.request.Request(mesh.cp_info["api"] + "/v1/agent/join", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_join_tokens_are_single_use_and_bound_to_their_node(mesh):
    token = mesh._post("/v1/tokens", {"node": "vm-new", "ttl": "5m"})["token"]
    status, other_node = _join(mesh, "n1", token)  # a token for vm-new cannot make an n1 identity
    assert status == 403 and "join refused" in other_node["error"]
    status, joined = _join(mesh, "vm-new", token)
    assert status == 200 and joined["spiffe_id"] == naming.node_spiffe_id(TD, "vm-new")
    status, again = _join(mesh, "vm-new", token)
    assert status == 403 and "join refused" in again["error"]
    # a spent token is not in the clear anywhere in the control plane's state
    for path in (mesh.state / "controlplane").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert "PRIVATE KEY" not in json.dumps(joined)  # the CA only ever saw a CSR; the key stayed here


DETAILS_FROM_REVIEWS_ONLY = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: details-from-reviews}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/reviews"]}}]}]
"""


def test_authz_dry_run_reads_the_proxies_access_logs(mesh, tmp_path):
    for _ in range(3):
        assert http_get(mesh.url, timeout=10)[0] == 200
    details_node = mesh.defs["details-v1"]["node"]
    log = mesh.state / "logs" / f"access-{details_node}.log"

    def logged() -> bool:
        # all three calls: Envoy flushes its access log about once a second, lines may come in two flushes
        return log.is_file() and sum('"inbound"' in line and '"details"' in line
                                     for line in log.read_text().splitlines()) >= 3

    wait_until(logged, 30, f"details' inbound calls in {log}")
    policy = tmp_path / "p.yaml"
    policy.write_text(DETAILS_FROM_REVIEWS_ONLY)
    result = json.loads(_meshctl(mesh, "authz", "dry-run", "-f", str(policy), "-o", "json").stdout)
    assert result["log_files"] >= 1 and result["observed"] >= 3
    denied = {(g["source_service"], g["destination"], g["method"]) for g in result["would_deny"]}
    assert ("productpage", "details", "GET") in denied
    assert all(g["destination"] == "details" for g in result["would_deny"])  # only details is selected
    assert result["would_allow"] == []
    assert _meshctl(mesh, "get", "authorizationpolicy", "-o", "json").stdout.strip() == "[]"  # nothing applied
