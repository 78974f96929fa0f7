"""CertificateAuthority: X509-SVID conformance, CSR checks, persistence, KEK handling."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcore import naming
from meshcore.ca import CertificateAuthority, cert_info, key_to_pem, make_csr, new_private_key
from meshcore.errors import CAError, SigningRefused

from .conftest import Clock, verify_chain

WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/default/sa/api"


def _issue(ca: CertificateAuthority, spiffe_id: str = WEB, **kw):
    key = new_private_key()
    return key, ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id, **kw)


def _csr_with_sans(key, sans: list[x509.GeneralName]) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_svid_parses_with_spiffe_library_and_chains_to_bundle(ca: CertificateAuthority, clock: Clock) -> None:
    key, issued = _issue(ca, node="vm1")
    svid = spiffe.X509Svid.parse(issued.chain_pem.encode(), key_to_pem(key).encode())
    assert str(svid.spiffe_id) == WEB
    assert len(svid.cert_chain) == 2
    bundle = spiffe.X509Bundle.parse(spiffe.TrustDomain("cluster.local"), ca.bundle_pem().encode())
    assert len(bundle.x509_authorities) == 1

    built = verify_chain(ca.bundle_pem(), issued.chain_pem, clock.now)
    assert [c.subject for c in built][-1] == next(iter(bundle.x509_authorities)).subject
    # The leaf's key is the workload's: the CA never generated it.
    leaf = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()


def test_chain_does_not_verify_against_another_ca(ca: CertificateAuthority, tmp_path: Path, clock: Clock) -> None:
    other = CertificateAuthority.open(tmp_path / "other", kek=os.urandom(32), clock=clock)
    _, issued = _issue(ca)
    with pytest.raises(VerificationError):
        verify_chain(other.bundle_pem(), issued.chain_pem, clock.now)


def test_leaf_conforms_to_x509_svid_spec(ca: CertificateAuthority, clock: Clock) -> None:
    _, issued = _issue(ca, node="vm1")
    leaf = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert len(list(san)) == 1
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    inter = x509.load_pem_x509_certificates(issued.chain_pem.encode())[1]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    # times: backdated one minute, default 24 h TTL
    assert issued.not_before == clock.now - timedelta(minutes=1)
    assert issued.not_after == clock.now + timedelta(hours=24)
    assert leaf.not_valid_after_utc == issued.not_after
    # serial: random 128-bit, lowercase hex, matches the certificate
    assert issued.serial == format(leaf.serial_number, "x") == issued.serial.lower()
    assert leaf.serial_number < 2**128
    assert issued.chain_pem.startswith(issued.cert_pem)
    assert issued.node == "vm1"


def test_ca_certificates_are_spiffe_signing_certs(ca: CertificateAuthority) -> None:
    _, issued = _issue(ca)
    inter = x509.load_pem_x509_certificates(issued.chain_pem.encode())[1]
    root = x509.load_pem_x509_certificate(ca.bundle_pem().encode())
    for cert, pathlen in ((root, 1), (inter, 0)):
        ext = cert.extensions
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local"]
        bc = ext.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == pathlen
        ku = ext.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
    assert root.not_valid_after_utc - root.not_valid_before_utc >= timedelta(days=3650)
    assert timedelta(days=364) < inter.not_valid_after_utc - inter.not_valid_before_utc <= timedelta(days=366)
    inter.verify_directly_issued_by(root)


def test_serials_are_distinct(ca: CertificateAuthority) -> None:
    serials = {_issue(ca)[1].serial for _ in range(5)}
    assert len(serials) == 5


def test_csr_with_different_san_is_refused(ca: CertificateAuthority) -> None:
    key = new_private_key()
    with pytest.raises(SigningRefused, match="exactly that one URI SAN"):
        ca.sign_csr(make_csr(key, API), spiffe_id=WEB)


def test_csr_with_extra_san_is_refused(ca: CertificateAuthority) -> None:
    key = new_private_key()
    csr = _csr_with_sans(key, [x509.UniformResourceIdentifier(WEB), x509.DNSName("evil.example")])
    with pytest.raises(SigningRefused, match="evil.example"):
        ca.sign_csr(csr, spiffe_id=WEB)
    two_uris = _csr_with_sans(key, [x509.UniformResourceIdentifier(WEB), x509.UniformResourceIdentifier(API)])
    with pytest.raises(SigningRefused, match="exactly that one URI SAN"):
        ca.sign_csr(two_uris, spiffe_id=WEB)


def test_csr_without_san_gets_the_requested_identity(ca: CertificateAuthority, clock: Clock) -> None:
    key = new_private_key()
    issued = ca.sign_csr(_csr_with_sans(key, []), spiffe_id=API)
    assert cert_info(issued.cert_pem)["spiffe_id"] == API
    verify_chain(ca.bundle_pem(), issued.chain_pem, clock.now)


def test_csr_for_another_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    foreign = "spiffe://other.example/ns/default/sa/web"
    key = new_private_key()
    with pytest.raises(SigningRefused, match="other.example"):
        ca.sign_csr(make_csr(key, foreign), spiffe_id=foreign)


@pytest.mark.parametrize("bad", [
    "https://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local",
    "spiffe://cluster.local/ns//sa/web",
    "spiffe://cluster.local/ns/default/sa/../x",
    "spiffe://Cluster.Local/ns/default/sa/web",
    "spiffe://cluster.local/ns/default/sa/we b",
])
def test_malformed_spiffe_ids_are_refused(ca: CertificateAuthority, bad: str) -> None:
    key = new_private_key()
    with pytest.raises(SigningRefused):
        ca.sign_csr(_csr_with_sans(key, []), spiffe_id=bad)


def test_tampered_csr_is_refused(ca: CertificateAuthority) -> None:
    key = new_private_key()
    der = bytearray(x509.load_pem_x509_csr(make_csr(key, WEB).encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # flip a bit in the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(SigningRefused, match="signature"):
        ca.sign_csr(tampered, spiffe_id=WEB)
    with pytest.raises(SigningRefused, match="not a PEM"):
        ca.sign_csr("garbage", spiffe_id=WEB)


def test_dns_sans_only_for_the_control_plane(ca: CertificateAuthority, clock: Clock) -> None:
    key = new_private_key()
    with pytest.raises(SigningRefused, match="only issued to the control plane"):
        ca.sign_csr(make_csr(key, WEB), spiffe_id=WEB, dns_names=["web.local"])

    cp = naming.control_plane_spiffe_id("cluster.local")
    issued = ca.sign_csr(make_csr(key, cp), spiffe_id=cp, dns_names=["cp.mesh.local"], ip_addresses=["127.0.0.1"])
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    store = Store(x509.load_pem_x509_certificates(ca.bundle_pem().encode()))
    verifier = PolicyBuilder().store(store).time(clock.now).build_server_verifier(x509.DNSName("cp.mesh.local"))
    verifier.verify(chain[0], chain[1:])
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [cp]


def test_ttl_is_capped_at_the_intermediate(ca: CertificateAuthority) -> None:
    _, issued = _issue(ca, ttl=timedelta(days=5000))
    inter = x509.load_pem_x509_certificates(issued.chain_pem.encode())[1]
    assert issued.not_after == inter.not_valid_after_utc


def test_issued_lists_newest_per_identity_and_node_and_persists(
    ca: CertificateAuthority, state_dir: Path, kek: bytes, clock: Clock
) -> None:
    _issue(ca, WEB, node="vm1")
    clock.advance(timedelta(hours=12))
    _, newer = _issue(ca, WEB, node="vm1")
    _, other_node = _issue(ca, WEB, node="vm2")
    _, api = _issue(ca, API, node="vm1", ttl=timedelta(hours=1))
    assert [(c.spiffe_id, c.node, c.serial) for c in ca.issued()] == [
        (API, "vm1", api.serial), (WEB, "vm1", newer.serial), (WEB, "vm2", other_node.serial),
    ]
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.issued() == ca.issued()
    clock.advance(timedelta(hours=2))  # api's 1 h certificate has expired
    assert [c.spiffe_id for c in reopened.issued()] == [WEB, WEB]


def test_reopen_with_right_kek_keeps_the_root(ca: CertificateAuthority, state_dir: Path, kek: bytes,
                                              clock: Clock) -> None:
    _, before = _issue(ca)
    again = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert again.bundle_pem() == ca.bundle_pem()
    _, after = _issue(again)
    verify_chain(ca.bundle_pem(), after.chain_pem, clock.now)
    assert x509.load_pem_x509_certificates(after.chain_pem.encode())[1] == \
        x509.load_pem_x509_certificates(before.chain_pem.encode())[1]


def test_wrong_kek_fails_clearly(ca: CertificateAuthority, state_dir: Path) -> None:
    with pytest.raises(CAError, match="wrong key-encryption key"):
        CertificateAuthority.open(state_dir, kek=os.urandom(32))


def test_other_trust_domain_on_reopen_fails(ca: CertificateAuthority, state_dir: Path, kek: bytes) -> None:
    with pytest.raises(CAError, match="trust domain 'cluster.local', not 'example.org'"):
        CertificateAuthority.open(state_dir, kek=kek, trust_domain="example.org")


def test_intermediate_is_renewed_before_expiry_under_the_same_root(
    ca: CertificateAuthority, state_dir: Path, kek: bytes, clock: Clock
) -> None:
    _, first = _issue(ca)
    old_inter = x509.load_pem_x509_certificates(first.chain_pem.encode())[1]
    clock.advance(timedelta(days=340))
    _, later = _issue(ca)
    new_inter = x509.load_pem_x509_certificates(later.chain_pem.encode())[1]
    assert new_inter.serial_number != old_inter.serial_number
    assert new_inter.not_valid_after_utc > old_inter.not_valid_after_utc
    verify_chain(ca.bundle_pem(), later.chain_pem, clock.now)
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.intermediate_pem() == ca.intermediate_pem()


def test_custom_trust_domain(tmp_path: Path, kek: bytes, clock: Clock) -> None:
    ca = CertificateAuthority.open(tmp_path / "td", kek=kek, trust_domain="example.org", clock=clock)
    sid = "spiffe://example.org/ns/shop/sa/cart"
    key, issued = _issue(ca, sid)
    assert str(spiffe.X509Svid.parse(issued.chain_pem.encode(), key_to_pem(key).encode()).spiffe_id) == sid
    with pytest.raises(SigningRefused):
        _issue(ca, WEB)
    with pytest.raises(CAError, match="canonical"):
        CertificateAuthority.open(tmp_path / "bad", kek=kek, trust_domain="Example.org")


def test_cert_info(ca: CertificateAuthority) -> None:
    _, issued = _issue(ca)
    info = cert_info(issued.chain_pem)
    assert info["spiffe_id"] == WEB
    assert info["serial"] == issued.serial
    assert info["not_after"].endswith("Z") and info["not_after"].startswith(issued.not_after.strftime("%Y-%m-%dT%H:%M"))
    assert "intermediate" in info["issuer"]
    with pytest.raises(CAError):
        cert_info("not a cert")


def test_two_handles_share_one_renewed_intermediate(
    ca: CertificateAuthority, state_dir: Path, kek: bytes, clock: Clock
) -> None:
    other = CertificateAuthority.open(state_dir, kek=kek, clock=clock)  # e.g. meshctl beside the control plane
    clock.advance(timedelta(days=340))
    _issue(ca)
    _, from_other = _issue(other)
    assert other.intermediate_pem() == ca.intermediate_pem()
    assert from_other.chain_pem.endswith(ca.intermediate_pem())
