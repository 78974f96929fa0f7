"""End to end: a workload of another trust domain calls a mesh service, with real Envoys.

A second, independent CA for ``other.example`` (a meshcore CertificateAuthority in a temp dir, as the
other domain's control plane would hold) issues client SVIDs; a Python TLS client presenting one
calls details' inbound listener directly. Refused (TLS) before ``meshctl trust-bundle import``;
after it, authorized by principal like any caller (AuthorizationPolicy), so a different principal of
the same domain gets 403; a client whose certificate comes from an unknown CA claiming the same
domain is refused by TLS, and so are node certificates of either domain (no workload). A local CA root
rotation keeps the federated peer working.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from datetime import timedelta
from pathlib import Path

import pytest

from meshcore.ca import CertificateAuthority, key_to_pem, make_csr, new_private_key
from meshcore.demo.launcher import http_get, wait_until
from meshcore.federation import to_spiffe_bundle

from ._topology import running_mesh
from .test_authz import _meshctl, _mtls_status, _page_parts_ok
from .test_mesh import _join_cert

OTHER = "other.example"
CLIENT = f"spiffe://{OTHER}/ns/default/sa/client"
INTRUDER = f"spiffe://{OTHER}/ns/default/sa/intruder"
WAIT_S = 30.0  # generous: agents refresh every 2s, the machine may be busy

POLICY = f"""\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: details-federated}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/default/sa/productpage", "{OTHER}/ns/default/sa/client"]}}}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("federation-mesh")
    with running_mesh(state, artifacts="e2e-federation-logs", leaf_ttl="1h", agent_refresh="2s") as m:
        m.certs = state / "certs"
        m.certs.mkdir()
        kek = os.urandom(32)
        m.other = CertificateAuthority.open(state / "other-domain-ca", trust_domain=OTHER, kek=kek,
                                            leaf_ttl=timedelta(hours=1))
        m.impostor = CertificateAuthority.open(state / "impostor-ca", trust_domain=OTHER, kek=kek)
        yield m


def _svid(mesh, ca: CertificateAuthority, spiffe_id: str, tag: str) -> tuple[Path, Path]:
    cert, key_path = mesh.certs / f"{tag}.pem", mesh.certs / f"{tag}.key"
    key = new_private_key()
    cert.write_text(ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id).chain_pem)
    key_path.write_text(key_to_pem(key))
    return cert, key_path


def _call(mesh, identity) -> str:
    """details' answer to ``identity`` as a status string, or ``refused`` when TLS refuses it."""
    try:
        return str(_mtls_status(mesh, "details-v1", identity, path="/details/0"))
    except (ssl.SSLError, OSError, IndexError, ValueError):
        return "refused"


def _until(mesh, identity, want: str, what: str) -> None:
    wait_until(lambda: _call(mesh, identity) == want, WAIT_S, what, interval=0.2)


def test_federated_client_refused_then_authorized_by_principal(mesh, tmp_path):
    client = _svid(mesh, mesh.other, CLIENT, "client")
    intruder = _svid(mesh, mesh.other, INTRUDER, "intruder")
    impostor = _svid(mesh, mesh.impostor, CLIENT, "impostor")
    assert _call(mesh, client) == "refused"  # other.example is not trusted yet

    bundle = tmp_path / "other.json"
    bundle.write_text(json.dumps(to_spiffe_bundle(mesh.other.bundle_pem(), sequence=1)))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    _meshctl(mesh, "apply", "-f", str(policy))
    _meshctl(mesh, "trust-bundle", "import", "-f", str(bundle), "--trust-domain", OTHER)
    _until(mesh, client, "200", "details to accept other.example/ns/default/sa/client")
    assert _call(mesh, intruder) == "403"  # authenticated, but no policy allows it
    assert _call(mesh, impostor) == "refused"  # same name, unknown CA
    # node identities are no callers, of either domain, although they chain to trusted roots
    other_node = _svid(mesh, mesh.other, f"spiffe://{OTHER}/meshcore/node/vm9", "other-node")
    (tmp_path / "node").mkdir()
    local_node = _join_cert(mesh, tmp_path / "node")
    assert _call(mesh, other_node) == "refused"
    assert _call(mesh, local_node) == "refused"
    assert _call(mesh, client) == "200"
    assert _page_parts_ok(mesh)  # productpage -> details unaffected

    check = json.loads(_meshctl(mesh, "authz", "check", "--from", f"{OTHER}/ns/default/sa/client", "--to", "details",
                                "--path", "/details/0", "-o", "json").stdout)
    assert check["allowed"] is True and check["results"][0]["policy"] == "default/details-federated"

    # what the agents wrote for Envoy: one PEM per federated domain, and the per-domain validator
    node = mesh.defs["details-v1"]["node"]
    node_dir = mesh.state / "nodes" / node
    assert (node_dir / "federated" / f"{OTHER}.pem").read_text() == mesh.other.bundle_pem()
    secret = json.loads((node_dir / "secrets" / "bundle_cluster.local.yaml").read_text())["resources"][0]
    domains = secret["validation_context"]["custom_validator_config"]["typed_config"]["trust_domains"]
    assert [d["name"] for d in domains] == ["cluster.local", OTHER]


def test_federated_peer_survives_local_root_rotation(mesh):
    client = _svid(mesh, mesh.other, CLIENT, "client2")
    _until(mesh, client, "200", "the federated client to be accepted")
    _meshctl(mesh, "ca", "rotate")

    def rotated() -> bool:
        status, body = http_get(mesh.cp_info["http"] + "/v1/ca", headers=mesh.auth_headers())
        return status == 200 and json.loads(body)["phase"] == "rotating"

    wait_until(rotated, 60, "the rotation to become active (every node holding the two-root bundle)")
    time.sleep(5)  # agents renew their certificates from the new root within a refresh interval or two
    _until(mesh, client, "200", "the federated client to be accepted after the root rotation")
    wait_until(lambda: _page_parts_ok(mesh), WAIT_S, "bookinfo to serve after the root rotation")
    node_dir = mesh.state / "nodes" / mesh.defs["details-v1"]["node"]
    secret = json.loads((node_dir / "secrets" / "bundle_cluster.local.yaml").read_text())["resources"][0]
    domains = secret["validation_context"]["custom_validator_config"]["typed_config"]["trust_domains"]
    local = next(d for d in domains if d["name"] == "cluster.local")["trust_bundle"]["inline_string"]
    assert local.count("BEGIN CERTIFICATE") == 2  # the two-root local bundle, next to other.example's

    _meshctl(mesh, "trust-bundle", "remove", OTHER)
    _until(mesh, client, "refused", "other.example peers to be refused after `trust-bundle remove`")
