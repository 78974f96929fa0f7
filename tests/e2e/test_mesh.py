"""End to end, with real Envoys on loopback: control plane, agents, SVIDs, mTLS, xDS updates, rotation.

One mesh for the module (it takes ~20 s to come up): the bookinfo sample over four nodes, leaf
certificates of 20 s so that rotation happens while the tests run.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshcore import naming
from meshcore.ca import CertificateAuthority, generate_kek_file, key_to_pem, load_kek, make_csr, new_private_key
from meshcore.demo.launcher import http_get, wait_until

from ._topology import NODES, free_port, running_mesh

LEAF_TTL_S = 20


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("mesh"), artifacts="e2e-logs",
                      leaf_ttl=f"{LEAF_TTL_S}s", agent_refresh="2s") as m:
        yield m


def _inbounds(mesh) -> dict[str, tuple[str, int]]:
    out = {}
    for sid, d in mesh.defs.items():
        if "connect" in d:
            out[sid] = (NODES[d["node"]], d["connect"]["sidecar_service"]["port"])
    return out


@pytest.fixture
def mesh_client_cert(mesh, tmp_path_factory):
    """A genuine workload SVID of the trust domain (productpage's identity), signed by the mesh's CA.

    Fresh per test: the mesh's leaves live only LEAF_TTL_S seconds."""
    return _workload_cert(mesh, tmp_path_factory.mktemp("client"))


def _workload_cert(mesh, tmp: Path, service: str = "productpage"):
    """A workload SVID ``spiffe://cluster.local/ns/default/sa/<service>`` from the mesh's CA (key made here)."""
    spiffe_id = naming.workload_spiffe_id("cluster.local", naming.DEFAULT_NAMESPACE, service)
    ca = CertificateAuthority.open(mesh.state / "controlplane" / "ca", kek=load_kek(mesh.state / "kek"),
                                   leaf_ttl=timedelta(seconds=LEAF_TTL_S))
    key = new_private_key()
    (tmp / "c.pem").write_text(ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id).chain_pem)
    (tmp / "k.pem").write_text(key_to_pem(key))
    return tmp / "c.pem", tmp / "k.pem"


def _join_cert(mesh, tmp: Path):
    """A node certificate (``spiffe://cluster.local/meshcore/node/tester``), obtained the way an agent does:
    a join token. It serves the agent API and ADS; no inbound listener accepts it as a caller."""
    token = mesh._post("/v1/tokens", {"node": "tester", "ttl": "5m"})["token"]
    key = new_private_key()
    csr = make_csr(key, naming.node_spiffe_id("cluster.local", "tester"))
    ctx = ssl.create_default_context(cafile=mesh.cp_info["ca_file"])
    req = urllib.request.Request(mesh.cp_info["api"] + "/v1/agent/join", method="POST",
                                 data=json.dumps({"node": "tester", "token": token, "csr": csr}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        issued = json.loads(resp.read())
    (tmp / "c.pem").write_text(issued["chain"])
    (tmp / "k.pem").write_text(key_to_pem(key))
    return tmp / "c.pem", tmp / "k.pem"


def _mtls_get(host, port, cert, key, cafile, path="/health"):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # SPIFFE: identity is the URI SAN, checked below
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return peer, data


def test_request_through_mesh(mesh):
    status, body = http_get(mesh.url)
    assert status == 200
    data = json.loads(body)
    assert data["details"]["service"] == "details"
    assert data["reviews"]["version"] in ("v1", "v2", "v3")


def test_all_reviews_versions_reachable(mesh):
    seen = set()
    for _ in range(60):
        status, body = http_get(mesh.url)
        assert status == 200
        seen.add(json.loads(body)["reviews"]["version"])
    assert seen == {"v1", "v2", "v3"}


def test_status_contract(mesh):
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "status", "-o", "json",
                          "--server", mesh.cp_info["http"]], capture_output=True, text=True, check=True,
                         env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})
    status = json.loads(out.stdout)
    assert {"xds", "http"} <= set(status["control_plane"])
    by_node = {p["node"]: p for p in status["proxies"]}
    assert set(NODES) <= set(by_node)
    for node in NODES:
        p = by_node[node]
        assert p["synced"] is True and p["admin"]
        for svc in p["services"]:
            assert svc["spiffe_id"].startswith("spiffe://cluster.local/ns/default/sa/")
    inbound = {s["id"]: s["inbound"] for p in status["proxies"] for s in p["services"]}
    gateways = {g["id"]: g for p in status["proxies"] for g in p["gateways"]}
    assert gateways["ingress-gateway"]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/ingress-gateway"
    for sid, (host, port) in _inbounds(mesh).items():
        assert inbound[sid] == f"{host}:{port}"


def test_plaintext_refused_at_every_inbound(mesh):
    for sid, (host, port) in _inbounds(mesh).items():
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
        assert not data.startswith(b"HTTP/"), f"{sid} answered plaintext: {data[:60]!r}"


def test_foreign_ca_refused_at_every_inbound(mesh, tmp_path):
    kek = generate_kek_file(tmp_path / "kek")
    other = CertificateAuthority.open(tmp_path / "other-ca", kek=kek)
    key = new_private_key()
    issued = other.sign_csr(make_csr(key, "spiffe://cluster.local/ns/default/sa/productpage"),
                            spiffe_id="spiffe://cluster.local/ns/default/sa/productpage")
    (tmp_path / "c.pem").write_text(issued.chain_pem)
    (tmp_path / "k.pem").write_text(key_to_pem(key))
    for sid, (host, port) in _inbounds(mesh).items():
        try:
            _, data = _mtls_get(host, port, tmp_path / "c.pem", tmp_path / "k.pem", mesh.cp_info["ca_file"])
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            continue
        assert not data.startswith(b"HTTP/"), f"{sid} served a client of another CA"


def _refused(host, port, cert, key, cafile) -> bool:
    """True when the inbound listener refuses the mTLS caller: the handshake fails, or nothing HTTP comes back."""
    try:
        _, data = _mtls_get(host, port, cert, key, cafile)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return not data.startswith(b"HTTP/")


def _apply_policy(mesh, path: Path, verb: str = "apply") -> None:
    subprocess.run([sys.executable, "-m", "meshcore.cli.main", verb, "-f", str(path), "--server", mesh.cp_info["http"]],
                   check=True, capture_output=True, env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def test_node_certificate_refused_at_every_inbound_strict_and_permissive(mesh, tmp_path):
    """A node certificate chains to the mesh's roots but is no workload: every inbound listener refuses it in
    the handshake, STRICT or PERMISSIVE, while a workload SVID of the same CA gets through."""
    (tmp_path / "node").mkdir()
    node = _join_cert(mesh, tmp_path / "node")
    cafile = mesh.cp_info["ca_file"]
    inbounds = _inbounds(mesh)

    def check(mode: str) -> None:
        (tmp_path / mode).mkdir()
        workload = _workload_cert(mesh, tmp_path / mode)  # fresh: leaves live LEAF_TTL_S seconds
        for sid, (host, port) in inbounds.items():
            assert _refused(host, port, *node, cafile), f"{mode}: {sid} accepted a node certificate as a caller"
            _, data = _mtls_get(host, port, *workload, cafile)
            assert data.startswith(b"HTTP/1.1 200"), (mode, sid, data[:100])

    check("STRICT")
    policy = tmp_path / "mesh-permissive.yaml"
    policy.write_text(
        "apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
        "metadata:\n  name: mesh-permissive\n  namespace: meshcore-system\nspec:\n  mtls:\n    mode: PERMISSIVE\n")
    _apply_policy(mesh, policy)
    try:
        for sid, (host, port) in inbounds.items():
            wait_until(lambda h=host, p=port: http_get(f"http://{h}:{p}/health", timeout=2)[0] == 200, 30.0,
                       f"PERMISSIVE to accept plaintext at {sid}", interval=0.1)
        check("PERMISSIVE")
    finally:
        _apply_policy(mesh, policy, "delete")

    def plaintext_refused(host, port) -> bool:
        try:
            http_get(f"http://{host}:{port}/health", timeout=1)
        except (OSError, ConnectionError):
            return True
        return False

    for sid, (host, port) in inbounds.items():
        wait_until(lambda h=host, p=port: plaintext_refused(h, p), 30.0, f"STRICT again at {sid}", interval=0.1)


def test_inbound_presents_service_identity(mesh, mesh_client_cert):
    cert, key = mesh_client_cert
    for sid, (host, port) in _inbounds(mesh).items():
        peer, data = _mtls_get(host, port, cert, key, mesh.cp_info["ca_file"])
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        uris = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://cluster.local/ns/default/sa/{mesh.defs[sid]['name']}"]


def _endpoint_hosts(admin: str, cluster_prefix: str) -> set[str]:
    status, body = http_get(f"http://{admin}/clusters?format=json")
    assert status == 200
    hosts = set()
    for cl in json.loads(body).get("cluster_statuses", []):
        if cl["name"].startswith(cluster_prefix):
            for h in cl.get("host_statuses", []):
                sa = h["address"]["socket_address"]
                hosts.add(f"{sa['address']}:{sa['port_value']}")
    return hosts


def test_catalog_changes_reach_envoy_within_two_seconds(mesh):
    admin = mesh.layout.admin["n1"]
    before = _endpoint_hosts(admin, "outbound:reviews|")
    assert len(before) == 3
    extra_port = free_port(NODES["n3"])
    definition = {"service": {"name": "reviews", "id": "reviews-v9", "port": free_port(NODES["n3"]),
                              "meta": {"version": "v9"},
                              "connect": {"sidecar_service": {"port": extra_port}}}}
    path = mesh.layout.catalog_dir / "n3" / "reviews-v9.json"
    path.write_text(json.dumps(definition))
    started = time.monotonic()
    wait_until(lambda: f"{NODES['n3']}:{extra_port}" in _endpoint_hosts(admin, "outbound:reviews|"), 2.0,
               "the new instance in n1's Envoy", interval=0.05)
    added = time.monotonic() - started
    path.unlink()
    started = time.monotonic()
    wait_until(lambda: _endpoint_hosts(admin, "outbound:reviews|") == before, 2.0,
               "the removed instance to leave n1's Envoy", interval=0.05)
    print(f"catalog -> Envoy: add {added * 1000:.0f} ms, remove {(time.monotonic() - started) * 1000:.0f} ms")


def test_permissive_then_strict_within_two_seconds(mesh, tmp_path):
    host, port = _inbounds(mesh)["details-v1"]
    policy = tmp_path / "permissive.yaml"
    policy.write_text(
        "apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: details-permissive\n"
        "spec:\n  selector:\n    matchLabels:\n      app: details\n  mtls:\n    mode: PERMISSIVE\n")
    base = [sys.executable, "-m", "meshcore.cli.main"]
    server = ["--server", mesh.cp_info["http"]]
    env = {**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)}
    subprocess.run(base + ["apply", "-f", str(policy)] + server, check=True, capture_output=True, env=env)
    plain = f"http://{host}:{port}/details/0"
    wait_until(lambda: http_get(plain)[0] == 200, 30, "PERMISSIVE to accept plaintext", interval=0.05)
    # mTLS still works on the same port: the mesh path through productpage is unaffected.
    assert json.loads(http_get(mesh.url)[1])["details"]["service"] == "details"
    subprocess.run(base + ["delete", "-f", str(policy)] + server, check=True, capture_output=True, env=env)

    def refused():
        try:
            http_get(plain, timeout=1)
        except (OSError, ConnectionError):
            return True
        return False

    wait_until(refused, 30, "STRICT to refuse plaintext again", interval=0.05)


def test_rotation_under_steady_traffic_loses_no_request(mesh, mesh_client_cert, tmp_path):
    """Leaves live 20 s and rotate at about half life; 25 s of traffic must see new serials and no failure."""
    cert, key = mesh_client_cert
    host, port = _inbounds(mesh)["productpage-v1"]
    first, _ = _mtls_get(host, port, cert, key, mesh.cp_info["ca_file"])
    results = {"ok": 0, "failed": []}
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                status, body = http_get(mesh.url, timeout=5)
                data = json.loads(body)
                if status == 200 and "error" not in data["details"] and "error" not in data["reviews"]:
                    results["ok"] += 1
                else:
                    results["failed"].append((status, body[:200]))
            except Exception as exc:  # any failure counts
                results["failed"].append(repr(exc))
            time.sleep(0.02)

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(LEAF_TTL_S * 1.25)
    stop.set()
    for w in workers:
        w.join()
    cert, key = _workload_cert(mesh, tmp_path)  # the first client certificate has expired by now
    second, _ = _mtls_get(host, port, cert, key, mesh.cp_info["ca_file"])
    print(f"rotation: {results['ok']} requests ok, {len(results['failed'])} failed; "
          f"serial {first.serial_number:x} -> {second.serial_number:x}")
    assert second.serial_number != first.serial_number, "the inbound certificate was not rotated"
    assert results["ok"] > 100
    assert results["failed"] == []


def test_mesh_keeps_serving_while_the_control_plane_is_away(mesh):
    """Envoys keep their last config without the control plane; after it restarts (same CA, from its
    encrypted state) every agent reconnects with its node certificate, no new join token."""
    assert mesh.stop("controlplane")
    failures = 0
    deadline = time.monotonic() + 4
    count = 0
    while time.monotonic() < deadline:
        status, body = http_get(mesh.url)
        data = json.loads(body) if status == 200 else {}
        failures += status != 200 or "error" in data.get("details", {}) or "error" in data.get("reviews", {})
        count += 1
    assert count > 20 and failures == 0
    mesh.start_control_plane()
    mesh.wait_synced(timeout=60)
    assert http_get(mesh.url)[0] == 200


def _meshctl(mesh, *args, check=True):
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args, "--server", mesh.cp_info["http"]],
                          capture_output=True, text=True, check=check, timeout=60,
                          env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def test_cli_get_proxy_config_and_all_or_nothing_apply(mesh, tmp_path):
    proxies = json.loads(_meshctl(mesh, "get", "proxies", "-o", "json").stdout)
    assert {p["node"] for p in proxies} >= set(NODES)
    config = json.loads(_meshctl(mesh, "proxy-config", "n1", "-o", "json").stdout)
    listeners = {l["name"] for l in config["resources"]["Listener"]}
    assert {"inbound:productpage-v1", "inbound:reviews-v1"} <= listeners
    dump = json.loads(_meshctl(mesh, "proxy-config", "n1", "--envoy").stdout)
    assert any("ListenersConfigDump" in c["@type"] for c in dump["configs"])
    missing = _meshctl(mesh, "proxy-config", "nope", check=False)
    assert missing.returncode == 1 and "no proxy for node 'nope'" in missing.stderr

    # One good and one bad document: the error names file, document and field; nothing is applied.
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: good\nspec:\n"
        "  mtls:\n    mode: STRICT\n---\n"
        "apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: bad\nspec:\n"
        "  mtls:\n    mode: SOMETIMES\n")
    for cmd in ("validate", "apply"):
        out = _meshctl(mesh, cmd, "-f", str(mixed), check=False)
        assert out.returncode == 1
        assert f"{mixed} (document 2): spec.mtls.mode" in out.stderr
    assert json.loads(_meshctl(mesh, "get", "PeerAuthentication", "-o", "json").stdout) == []
    good = tmp_path / "good.yaml"
    good.write_text(mixed.read_text().split("---")[0])
    dry = json.loads(_meshctl(mesh, "apply", "--dry-run", "-f", str(good), "-o", "json").stdout)
    # Per proxy: what would change. STRICT is already the mesh default, so no route or cluster changes.
    assert set(dry) >= set(NODES)
    assert all(not (v["added"] or v["removed"] or v["changed"]) for v in dry.values()), dry
    assert json.loads(_meshctl(mesh, "get", "PeerAuthentication", "-o", "json").stdout) == []
