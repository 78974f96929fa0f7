"""The answer of join / renew-node / sign / recover: what the agent API encodes itself (the parts shared by every
certificate of one CA state encoded once) is byte for byte what the router would encode from the contract."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from meshcore import naming
from meshcore.api import agent as wire
from meshcore.ca import CertificateAuthority, IssuedCertificate, JoinTokenStore, generate_kek_file, make_csr, new_private_key
from meshcore.catalog.model import Catalog
from meshcore.controlplane._http import EncodedJson
from meshcore.controlplane.agent_api import AgentApi

TD = naming.DEFAULT_TRUST_DOMAIN
WEB = naming.workload_spiffe_id(TD, "default", "web")


def _reference(api: AgentApi, cert: IssuedCertificate) -> bytes:
    """The answer as the router encodes a contract (compact, sorted keys, a newline)."""
    ca = api.ca
    identity = wire.IssuedIdentity(
        certificate=cert.cert_pem, chain=cert.chain_pem, bundle=ca.bundle_pem(), spiffe_id=cert.spiffe_id,
        serial=cert.serial, not_after=cert.not_after.isoformat().replace("+00:00", "Z"), trust_domain=TD,
        xds_address=api.xds_address,
        ca=wire.CaInfo(bundle_sha256=ca.bundle_sha256(), signer_key_id=ca.signer_key_id(), phase=ca.rotation_phase))
    return (json.dumps(identity.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()


def test_issued_answer_is_the_contract_encoded(tmp_path) -> None:
    kek = generate_kek_file(tmp_path / "kek")
    ca = CertificateAuthority.open(tmp_path / "ca", trust_domain=TD, kek=kek, leaf_ttl=timedelta(hours=1))
    api = AgentApi(ca, JoinTokenStore(tmp_path / "tokens", kek), lambda: Catalog.of([], []), "[::1]:15012")
    for _ in range(2):  # the second answer comes from the parts encoded for the first
        cert = ca.sign_csr(make_csr(new_private_key(), WEB), spiffe_id=WEB, node="vm1")
        body = api._issued(cert).body
        assert isinstance(body, EncodedJson) and bytes(body) == _reference(api, cert)
        decoded = wire.IssuedIdentity.from_json(json.loads(body), "answer")
        assert decoded.chain == cert.chain_pem and decoded.bundle == ca.bundle_pem()

    # a certificate whose chain is not the current intermediate's (signed before a rotation step)
    other = replace(cert, chain_pem=cert.cert_pem + "-----BEGIN CERTIFICATE-----\nother\n-----END CERTIFICATE-----\n")
    assert bytes(api._issued(other).body) == _reference(api, other)

    # a rotation prepared: the bundle (and its digest, the phase) change, and so does the answer
    ca.begin_rotation()
    cert = ca.sign_csr(make_csr(new_private_key(), WEB), spiffe_id=WEB, node="vm1")
    body = bytes(api._issued(cert).body)
    assert body == _reference(api, cert)
    assert json.loads(body)["ca"]["phase"] == ca.rotation_phase != "idle"
