"""What the signing path remembers between calls, and that no check is skipped because of it.

* Leaves are built with their constant extensions encoded once, and SVIDs (a URI SAN only) assembled from
  their issuer's DER template: the certificate must be byte-for-byte what the plain builder makes.
* A node certificate's parsed facts are remembered per DER: a revocation (also one written by another
  process) must still refuse it on the next call.
* A parsed CSR that :meth:`check_csr` verified is not verified again by :meth:`sign_csr`: every other
  check still runs, and a CSR never checked is still verified.
* SPIFFE IDs that passed are remembered: one that fails keeps failing.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.ca._spiffeid import parse_workload_id
from meshcore.ca._x509 import authority_key_id, build_ca_cert, build_leaf_cert
from meshcore.errors import SigningRefused

from .conftest import T0, Clock

WEB = "spiffe://cluster.local/ns/default/sa/web"
NODE = "vm1"
NODE_ID = f"spiffe://cluster.local/meshcore/node/{NODE}"


def _reference_leaf(issuer: x509.Certificate, issuer_key, public_key, rsa_key: bool, serial: int,
                    sans: tuple[x509.GeneralName, ...] = (x509.DNSName("cp.mesh.local"),
                                                          x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),
                    not_before: datetime = T0, not_after: datetime = T0 + timedelta(hours=1), spiffe_id: str = WEB):
    """The leaf as the plain `cryptography` builder makes it, every extension encoded on the spot."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcore"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "workload")]))
        .issuer_name(issuer.subject).public_key(public_key).serial_number(serial)
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id), *sans]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id(issuer), critical=False)
        .sign(issuer_key, hashes.SHA384() if getattr(getattr(issuer_key, "curve", None), "name", "") == "secp384r1"
              else hashes.SHA256())
    )


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_leaf_with_pre_encoded_extensions_is_byte_identical(key_type: str) -> None:
    issuer_key = new_private_key()
    issuers = [build_ca_cert(trust_domain="cluster.local", role="intermediate", key=issuer_key, not_before=T0,
                             not_after=T0 + timedelta(days=1), path_length=0, generation=g) for g in ("", "g2")]
    public_key = new_private_key(key_type).public_key()
    for issuer in issuers:  # a second issuer (a rotation) gets its own AKI, not the first one's
        leaf = build_leaf_cert(spiffe_id=WEB, public_key=public_key, not_before=T0, not_after=T0 + timedelta(hours=1),
                               issuer_cert=issuer, issuer_key=issuer_key, dns_names=["cp.mesh.local"],
                               ip_addresses=["10.0.0.1"], serial=4242)
        reference = _reference_leaf(issuer, issuer_key, public_key, key_type.startswith("rsa"), 4242)
        assert leaf.tbs_certificate_bytes == reference.tbs_certificate_bytes
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment == key_type.startswith("rsa")
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).critical


@pytest.mark.parametrize("issuer_type", ["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def test_svid_from_the_issuers_template_is_byte_identical(issuer_type: str, key_type: str) -> None:
    """An SVID (URI SAN only) is assembled from DER pieces: it must be what the builder makes, signed by the
    issuer with its algorithm, for every key type, serial length (a high bit needs a leading zero octet) and
    validity (UTCTime through 2049, GeneralizedTime from 2050)."""
    issuer_key = new_private_key(issuer_type)
    issuer = build_ca_cert(trust_domain="cluster.local", role="intermediate", key=issuer_key, not_before=T0,
                           not_after=T0 + timedelta(days=1), path_length=0)
    public_key = new_private_key(key_type).public_key()
    late = datetime(2049, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    validities = [(T0, T0 + timedelta(hours=1)), (late, late + timedelta(seconds=1))]
    long_id = f"spiffe://cluster.local/ns/{'n' * 63}/sa/{'s' * 200}"  # SAN and extension lengths over 127 octets
    for serial, spiffe_id in ((1, WEB), (127, WEB), (128, long_id), (2**127, WEB), (2**128 - 1, long_id)):
        for not_before, not_after in validities:
            leaf = build_leaf_cert(spiffe_id=spiffe_id, public_key=public_key, not_before=not_before,
                                   not_after=not_after, issuer_cert=issuer, issuer_key=issuer_key, serial=serial)
            reference = _reference_leaf(issuer, issuer_key, public_key, key_type.startswith("rsa"), serial, (),
                                        not_before, not_after, spiffe_id)
            assert leaf.tbs_certificate_bytes == reference.tbs_certificate_bytes
            assert leaf.signature_algorithm_oid == reference.signature_algorithm_oid
            leaf.verify_directly_issued_by(issuer)
            assert leaf.not_valid_after_utc == not_after and leaf.serial_number == serial


def test_svids_of_another_issuer_use_its_template() -> None:
    """After a rotation (a new intermediate, another key) leaves name and are signed by the new issuer."""
    leaves = []
    for generation in ("", "g2"):
        key = new_private_key()
        issuer = build_ca_cert(trust_domain="cluster.local", role="intermediate", key=key, not_before=T0,
                               not_after=T0 + timedelta(days=1), path_length=0, generation=generation)
        leaf = build_leaf_cert(spiffe_id=WEB, public_key=new_private_key().public_key(), not_before=T0,
                               not_after=T0 + timedelta(hours=1), issuer_cert=issuer, issuer_key=key)
        leaf.verify_directly_issued_by(issuer)
        assert leaf.issuer == issuer.subject
        leaves.append(leaf)
    assert leaves[0].issuer != leaves[1].issuer


def test_refusal_of_a_remembered_certificate_follows_revocation(ca: CertificateAuthority, state_dir, kek,
                                                                clock: Clock) -> None:
    issued = ca.sign_csr(make_csr(new_private_key(), NODE_ID), spiffe_id=NODE_ID, node=NODE, ttl=ca.node_ttl)
    der = x509.load_pem_x509_certificate(issued.cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    for _ in range(3):  # asked on every call of a kept-alive connection
        assert ca.node_certificate_refusal(NODE, der) is None
    clock.advance(timedelta(seconds=5))
    other = CertificateAuthority.open(state_dir, kek=kek, clock=clock)  # meshctl on the same state directory
    other.revoke_node(NODE, reason="stolen", by="test")
    refusal = ca.node_certificate_refusal(NODE, der)
    assert refusal is not None and "revoked" in refusal and "stolen" in refusal
    assert ca.node_certificate_refusal("vm2", der) is None  # the facts are the certificate's, the verdict the node's


def test_sign_after_check_still_makes_every_check(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(new_private_key(), WEB).encode())
    assert ca.check_csr(csr, spiffe_id=WEB) is csr
    with pytest.raises(SigningRefused, match="URI SAN"):  # verified once, but the identity is checked again
        ca.sign_csr(csr, spiffe_id="spiffe://cluster.local/ns/default/sa/api")
    with pytest.raises(SigningRefused, match="trust domain"):
        ca.sign_csr(csr, spiffe_id="spiffe://other.domain/ns/default/sa/web")
    assert ca.sign_csr(csr, spiffe_id=WEB).spiffe_id == WEB


def test_a_parsed_csr_never_checked_is_still_verified(ca: CertificateAuthority) -> None:
    der = bytearray(x509.load_pem_x509_csr(make_csr(new_private_key(), WEB).encode())
                    .public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # flip a bit in the signature
    tampered = x509.load_der_x509_csr(bytes(der))
    for _ in range(2):  # a refusal is not remembered as a pass
        with pytest.raises(SigningRefused, match="signature"):
            ca.check_csr(tampered, spiffe_id=WEB)
        with pytest.raises(SigningRefused, match="signature"):
            ca.sign_csr(tampered, spiffe_id=WEB)


def test_a_refused_spiffe_id_stays_refused() -> None:
    assert str(parse_workload_id(WEB, SigningRefused)) == WEB
    assert parse_workload_id(WEB, SigningRefused) is parse_workload_id(WEB, SigningRefused)
    for _ in range(2):
        with pytest.raises(SigningRefused, match="canonical"):
            parse_workload_id("spiffe://Cluster.Local/ns/default/sa/web", SigningRefused)
