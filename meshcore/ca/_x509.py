"""Private: building the CA certificates and X509-SVID leaves (pure, given keys and times)."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .keys import signature_hash

ORGANIZATION = "meshcore"
LEAF_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "workload"),
])


def random_serial() -> int:
    """A random positive 128-bit serial (never zero)."""
    return secrets.randbits(128) or 1


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def subject_key_id(cert: x509.Certificate) -> bytes:
    """The certificate's SKI, or the RFC 5280 method-1 digest of its key when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


def issuer_key_id(cert: x509.Certificate) -> bytes | None:
    """The AKI key identifier of ``cert`` (which CA key signed it), None when absent."""
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def authority_key_id(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier(subject_key_id(issuer_cert), None, None)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )


def _leaf_key_usage_for(rsa_key: bool) -> x509.KeyUsage:
    # X509-SVID spec 4.3: leaves MUST set digitalSignature; keyEncipherment only makes sense for RSA.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def ca_name(trust_domain: str, role: str, generation: str = "") -> x509.Name:
    """``O=meshcore, CN=meshcore <role> CA <td>[ <generation>]``; rotated roots carry a generation so
    that old and new CA certificates never share a subject (chain building stays unambiguous)."""
    cn = f"meshcore {role} CA {trust_domain}" + (f" {generation}" if generation else "")
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def build_ca_cert(
    *,
    trust_domain: str,
    role: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    not_before: datetime,
    not_after: datetime,
    path_length: int,
    issuer_cert: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    generation: str = "",
) -> x509.Certificate:
    """A SPIFFE signing certificate: URI SAN ``spiffe://<td>``, CA:true with ``path_length``,
    keyCertSign+cRLSign. Self-signed when ``issuer_cert`` is None."""
    subject = ca_name(trust_domain, role, generation)
    public_key = key.public_key()
    if issuer_cert is None:
        issuer_name, signer, aki = subject, key, x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    else:
        assert issuer_key is not None
        issuer_name, signer = issuer_cert.subject, issuer_key
        aki = authority_key_id(issuer_cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(signer, signature_hash(signer))


def _encoded(ext: x509.ExtensionType) -> x509.UnrecognizedExtension:
    """``ext`` DER-encoded once by the library, to be added as is: a leaf's constant extensions cost a
    copy instead of an encoding per certificate (the certificate is byte-for-byte the same)."""
    return x509.UnrecognizedExtension(ext.oid, ext.public_bytes())


_LEAF_BASIC_CONSTRAINTS = _encoded(x509.BasicConstraints(ca=False, path_length=None))
_LEAF_KEY_USAGE = {rsa_key: _encoded(_leaf_key_usage_for(rsa_key)) for rsa_key in (False, True)}
_LEAF_EXT_KEY_USAGE = _encoded(
    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]))
_AKI_CACHE_SIZE = 16
_aki_cache: dict[int, tuple[x509.Certificate, x509.UnrecognizedExtension]] = {}


def _encoded_aki(issuer_cert: x509.Certificate) -> x509.UnrecognizedExtension:
    """The AKI naming ``issuer_cert``, encoded once per issuer (a few at most: rotations)."""
    hit = _aki_cache.get(id(issuer_cert))
    if hit is not None and hit[0] is issuer_cert:  # the entry holds the certificate: its id is not reused
        return hit[1]
    ext = _encoded(authority_key_id(issuer_cert))
    if len(_aki_cache) >= _AKI_CACHE_SIZE:
        _aki_cache.clear()
    _aki_cache[id(issuer_cert)] = (issuer_cert, ext)
    return ext


def build_leaf_cert(
    *,
    spiffe_id: str,
    public_key: object,
    not_before: datetime,
    not_after: datetime,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    serial: int | None = None,
) -> x509.Certificate:
    """An X509-SVID leaf: exactly one URI SAN (plus DNS/IP SANs when given), CA:false critical,
    keyUsage critical, extKeyUsage serverAuth+clientAuth, SKI and AKI."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(LEAF_SUBJECT)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE[isinstance(public_key, rsa.RSAPublicKey)], critical=True)
        .add_extension(_LEAF_EXT_KEY_USAGE, critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(_encoded_aki(issuer_cert), critical=False)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))
