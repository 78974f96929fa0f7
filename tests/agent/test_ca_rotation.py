"""The agent follows a root rotation: new bundle to Envoy's SDS file and reported back, then every
certificate the new intermediate did not sign renewed early (jittered within a refresh interval)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509

from meshcore import naming
from meshcore.agent.client import NodeServices
from meshcore.agent.identity import CertSummary, bundle_sha256, early_renewal
from meshcore.agent.secrets import SecretsDirectory

from ._agent_api_server import AgentApiServer
from ._empty_ads import serve_empty_ads
from .test_daemon import AgentProcess, _agent_args, _free_port, _status, _wait

TD = naming.DEFAULT_TRUST_DOMAIN
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def test_early_renewal_is_within_the_window_and_never_later() -> None:
    far = T0 + timedelta(hours=12)
    assert early_renewal(far, T0, 10.0, 0.0) == T0
    assert early_renewal(far, T0, 10.0, 1.0) == T0 + timedelta(seconds=10)
    assert early_renewal(far, T0, 10.0, 0.25) == T0 + timedelta(seconds=2.5)
    soon = T0 + timedelta(seconds=3)
    assert early_renewal(soon, T0, 10.0, 0.9) == soon  # already due within the window: unchanged


def test_services_response_carries_the_ca_state() -> None:
    listing = NodeServices.from_json({"node": "vm1", "trust_domain": TD, "services": [],
                                      "ca": {"bundle_sha256": "AB12", "signer_key_id": "CD34"}}, "services")
    assert (listing.bundle_sha256, listing.signer_key_id) == ("ab12", "cd34")
    old = NodeServices.from_json({"node": "vm1", "trust_domain": TD, "services": []}, "services")
    assert (old.bundle_sha256, old.signer_key_id) == ("", "")


def _chain(state: Path, secret: str) -> str:
    data = SecretsDirectory(state / "secrets").read(secret)
    return data["tls_certificate"]["certificate_chain"]["inline_string"] if data else ""


def _bundle_roots(state: Path) -> int:
    data = SecretsDirectory(state / "secrets").read(naming.trust_bundle_secret(TD))
    if not data:
        return 0
    return len(x509.load_pem_x509_certificates(data["validation_context"]["trusted_ca"]["inline_string"].encode()))


def test_agent_follows_a_root_rotation(tmp_path: Path) -> None:
    cp = AgentApiServer(tmp_path / "cp", leaf_ttl=timedelta(hours=1))
    key_pem = (cp.root / "server.key").read_text()
    grpc_server, port, ads = serve_empty_ads(key_pem, (cp.root / "server.crt").read_text(), cp.ca.bundle_pem())
    cp.xds_address = f"127.0.0.1:{port}"
    cp.start()
    cp.add_service("vm1", "web")
    state = tmp_path / "state"
    token_file = tmp_path / "join-token"
    token_file.write_text(cp.token("vm1"))
    agent = AgentProcess(_agent_args(cp, state, f"127.0.0.1:{_free_port()}", "--join-token-file", str(token_file),
                                     "--envoy-log", str(tmp_path / "envoy.log")), tmp_path / "agent.log")
    web = naming.svid_secret("web")
    try:
        _wait(lambda: _status(state).get("envoy", {}).get("ready"), 40, "Envoy ready", agent)
        first_web = CertSummary.of(_chain(state, web))
        first_node = CertSummary.of((state / "node.crt").read_text())
        old_signer = cp.ca.signer_key_id()
        assert first_web.issuer_key_id == old_signer == first_node.issuer_key_id
        _wait(lambda: cp.bundle_acks.get("vm1") == cp.ca.bundle_sha256(), 5, "the agent to report its bundle", agent)

        # preparing: the two-root bundle reaches Envoy's SDS file and is reported; nothing is renewed yet
        cp.ca.begin_rotation()
        cp.trust_current_bundle()  # as the control plane does: accept node certificates of either root
        _wait(lambda: _bundle_roots(state) == 2, 5, "the two-root bundle in the SDS file", agent)
        _wait(lambda: cp.bundle_acks.get("vm1") == cp.ca.bundle_sha256(), 5, "the new bundle to be reported", agent)
        assert bundle_sha256((state / "bundle.pem").read_text()) == cp.ca.bundle_sha256()
        assert CertSummary.of(_chain(state, web)).serial == first_web.serial

        # rotating: the new signer makes the agent renew the SVID and the node certificate early
        cp.ca.activate_rotation()
        new_signer = cp.ca.signer_key_id()
        assert new_signer != old_signer
        _wait(lambda: CertSummary.of(_chain(state, web)).issuer_key_id == new_signer, 5,
              "the web SVID from the new intermediate", agent)
        _wait(lambda: CertSummary.of((state / "node.crt").read_text()).issuer_key_id == new_signer, 5,
              "the node certificate from the new intermediate", agent)
        assert "renewing early" in agent.log()
        assert [c.spiffe_id for c in cp.ca.old_root_certificates() if c.node == "vm1"] == []
        status = _status(state)
        assert status["envoy"]["restarts"] == 0

        # finished: the bundle shrinks to the new root
        cp.ca.finish_rotation(force=True)  # force: this test server never renews its own serving certificate
        _wait(lambda: _bundle_roots(state) == 1, 5, "the one-root bundle in the SDS file", agent)
        renewed = CertSummary.of(_chain(state, web)).serial
        assert renewed != first_web.serial
    finally:
        code = agent.stop()
        cp.stop()
        grpc_server.stop(grace=None)
    assert code == 0, agent.log()


def test_agent_key_type_is_validated_and_used(tmp_path: Path) -> None:
    import pytest
    from cryptography.hazmat.primitives.asymmetric import ec

    from meshcore.agent.config import load_config
    from meshcore.errors import ConfigError

    cp = AgentApiServer(tmp_path / "cp")
    base = ["--node", "vm1", "--control-plane", "https://127.0.0.1:1", "--ca-file", str(cp.ca_file)]
    assert load_config(base, {}).key_type == "ec-p256"
    assert load_config(base + ["--key-type", "ec-p384"], {}).key_type == "ec-p384"
    assert load_config(base, {"MESHCORE_AGENT_KEY_TYPE": "rsa-3072"}).key_type == "rsa-3072"
    with pytest.raises(ConfigError, match="key_type: 'dsa' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072"):
        load_config(base + ["--key-type", "dsa"], {})
    # a P-384 CSR as the agent makes it is signed by the CA
    from meshcore.ca import make_csr, new_private_key

    key = new_private_key("ec-p384")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    sid = naming.workload_spiffe_id(TD, "default", "web")
    issued = cp.ca.sign_csr(make_csr(key, sid), spiffe_id=sid)
    assert x509.load_pem_x509_certificate(issued.cert_pem.encode()).public_key().curve.name == "secp384r1"
