"""End to end: root CA rotation under steady traffic, with real Envoys on loopback.

Its own mesh (the bookinfo topology on free ports). Leaves live an hour, so every certificate that
moves to the new root does so because the agents renewed it early when they saw the issuer change,
not because it expired. ``meshctl ca rotate --hold``, ``--resume`` then ``--finish`` run while two clients call
the ingress gateway without pause: not one request may fail. Afterwards every inbound listener
presents a certificate that chains to the new root alone.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcore import naming
from meshcore.ca import CertificateAuthority, key_to_pem, load_kek, make_csr, new_private_key

from ._topology import NODES, running_mesh
from ._traffic import SteadyTraffic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("rotation-mesh"), leaf_ttl="1h", agent_refresh="1s") as m:
        yield m


def _meshctl_ca(mesh, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcore.cli.ca", *args, "--server", mesh.cp_info["http"]],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def _get(mesh, path: str):
    req = urllib.request.Request(mesh.cp_info["http"] + path, headers=mesh.auth_headers())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _join_cert(mesh, tmp: Path, cafile: Path) -> tuple[Path, Path, list[x509.Certificate]]:
    """A client certificate obtained as an agent does (join token + CSR), verifying the control plane
    against ``cafile`` only."""
    token = mesh._post("/v1/tokens", {"node": "tester", "ttl": "5m"})["token"]
    key = new_private_key()
    csr = make_csr(key, naming.node_spiffe_id("cluster.local", "tester"))
    ctx = ssl.create_default_context(cafile=str(cafile))
    req = urllib.request.Request(mesh.cp_info["api"] + "/v1/agent/join", method="POST",
                                 data=json.dumps({"node": "tester", "token": token, "csr": csr}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        issued = json.loads(resp.read())
    (tmp / "c.pem").write_text(issued["chain"])
    (tmp / "k.pem").write_text(key_to_pem(key))
    return tmp / "c.pem", tmp / "k.pem", x509.load_pem_x509_certificates(issued["chain"].encode())


def _presented_leaf(host: str, port: int, cert: Path, key: Path, cafile: Path) -> tuple[x509.Certificate, bytes]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return leaf, data


def _chains_to(root: x509.Certificate, leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> bool:
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError:
        return False
    return True


def test_root_rotation_under_traffic_loses_no_request(mesh, tmp_path):
    before = _get(mesh, "/v1/ca")
    assert before["phase"] == "idle" and len(before["roots"]) == 1
    old_root = x509.load_pem_x509_certificates(_get(mesh, "/v1/trust-bundle")["bundle"].encode())
    assert len(old_root) == 1
    started = time.monotonic()
    with SteadyTraffic(mesh.url) as traffic:
        time.sleep(1)
        # held (as rotate-ca.yml starts it, to hand the new root to federated domains first): the new root is in
        # the bundle, and signing stays on the old one however long every node has held the bundle
        held = _meshctl_ca(mesh, "ca", "rotate", "--hold", "-o", "json")
        assert held.returncode == 0, held.stderr
        assert json.loads(held.stdout)["held"] is True and "--resume" in held.stderr
        signer = json.loads(held.stdout)["signer_key_id"]
        watched_until = time.monotonic() + 4  # 4 agent refresh intervals: an unheld one would have moved on
        while time.monotonic() < watched_until:
            now = _get(mesh, "/v1/ca")
            assert (now["phase"], now["held"], now["signer_key_id"], len(now["roots"])) == (
                "preparing", True, signer, 2)
            time.sleep(0.25)
        assert now["nodes_without_bundle"] == [], now["nodes_without_bundle"]
        rotate = _meshctl_ca(mesh, "ca", "rotate", "--resume", "--timeout", "60s", "-o", "json")
        assert rotate.returncode == 0, rotate.stderr
        assert "held rotation released" in rotate.stderr
        rotated_at = time.monotonic()
        print(rotate.stderr)
        state = json.loads(rotate.stdout)
        assert state["phase"] == "rotating" and state["old_root_certificates"] == []
        assert [r["role"] for r in state["roots"]] == ["current", "previous"]
        assert "chain to the old root" in rotate.stderr  # progress was shown

        finish = _meshctl_ca(mesh, "ca", "rotate", "--finish", "-o", "json")
        assert finish.returncode == 0, finish.stderr
        assert json.loads(finish.stdout)["phase"] == "idle"
        # every agent picks up the single-root bundle within a refresh interval or two; keep calling meanwhile
        time.sleep(4)
    finished = time.monotonic()
    print(f"root rotation: --hold to the end of --resume {rotated_at - started - 1:.1f}s, total {finished - started:.1f}s; "
          f"{traffic.ok} requests ok, {len(traffic.failed)} failed")
    assert traffic.failed == []
    assert traffic.ok > 100

    bundle = x509.load_pem_x509_certificates(_get(mesh, "/v1/trust-bundle")["bundle"].encode())
    assert len(bundle) == 1 and bundle != old_root
    new_root = bundle[0]
    new_root_file = tmp_path / "new-root.pem"
    new_root_file.write_text(_get(mesh, "/v1/trust-bundle")["bundle"])
    assert Path(mesh.cp_info["ca_file"]).read_text() == new_root_file.read_text()

    # the control plane's agent API now presents a certificate of the new root: the join verifies with it alone
    cert, key, client_chain = _join_cert(mesh, tmp_path, new_root_file)
    assert _chains_to(new_root, client_chain[0], client_chain[1:])
    intermediates = client_chain[1:]
    inbounds = {sid: (NODES[d["node"]], d["connect"]["sidecar_service"]["port"])
                for sid, d in mesh.defs.items() if "connect" in d}
    # inbound listeners take workload SVIDs only (a node certificate is refused): productpage's, from the new root
    ca = CertificateAuthority.open(mesh.state / "controlplane" / "ca", kek=load_kek(mesh.state / "kek"))
    spiffe_id = naming.workload_spiffe_id("cluster.local", naming.DEFAULT_NAMESPACE, "productpage")
    workload_key = new_private_key()
    cert, key = tmp_path / "workload.pem", tmp_path / "workload.key"
    cert.write_text(ca.sign_csr(make_csr(workload_key, spiffe_id), spiffe_id=spiffe_id).chain_pem)
    key.write_text(key_to_pem(workload_key))
    for sid, (host, port) in inbounds.items():
        leaf, data = _presented_leaf(host, port, cert, key, new_root_file)
        assert data.startswith(b"HTTP/1.1 200"), (sid, data[:100])
        assert _chains_to(new_root, leaf, intermediates), f"{sid} presents a certificate not from the new root"
        assert not _chains_to(old_root[0], leaf, intermediates)

    certs = json.loads(_meshctl_ca(mesh, "certs", "list", "-o", "json").stdout)
    assert certs and all({"spiffe_id", "serial", "not_after", "node", "expiring"} <= set(c) for c in certs)
    assert all(c["not_after"].endswith("Z") for c in certs)
    assert {c["root"] for c in certs} == {"current"}
    assert not any(c["expiring"] for c in certs)
    assert {c["node"] for c in certs} >= set(NODES)
