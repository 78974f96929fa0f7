"""Private: building the CA certificates and X509-SVID leaves (pure, given keys and times)."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

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
    keyUsage critical, extKeyUsage serverAuth+clientAuth, SKI and AKI.

    A leaf with only its URI SAN (every SVID; the control plane's own certificate has DNS/IP SANs too) is
    assembled from its issuer's :class:`_LeafTemplate` (the DER the builder would make, see there);
    anything else goes through `cryptography`'s builder."""
    serial = serial if serial is not None else random_serial()
    if not dns_names and not ip_addresses and spiffe_id.isascii():
        template = _leaf_template(issuer_cert, issuer_key)
        if template is not None:
            return template.sign(spiffe_id, public_key, not_before, not_after, serial)
    return _built_leaf(spiffe_id, public_key, not_before, not_after, issuer_cert, issuer_key, dns_names,
                       ip_addresses, serial)


def _built_leaf(spiffe_id: str, public_key: object, not_before: datetime, not_after: datetime,
                issuer_cert: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                dns_names: Sequence[str], ip_addresses: Sequence[str], serial: int) -> x509.Certificate:
    """:func:`build_leaf_cert` by `cryptography`'s builder."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(LEAF_SUBJECT)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial)
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


# --- leaves from a DER template ------------------------------------------------------------------
#
# `cryptography`'s CertificateBuilder spends ~100 us per leaf on its own bookkeeping around a ~25 us
# ECDSA signature. An SVID differs from the next only in its serial, validity, public key, URI SAN and
# SKI, so the TBSCertificate is assembled from DER pieces encoded once per issuer (by `cryptography`:
# names, constant extensions, the signature algorithm of a probe leaf) and those five fields (DER by
# hand: INTEGER, UTCTime/GeneralizedTime, the key's SubjectPublicKeyInfo from `cryptography`, SAN,
# SKI). The result is signed with the issuer's key, then loaded back with `cryptography` and its TBS
# compared with what was signed, so a leaf that does not parse as meant is never handed out. The TBS is
# byte-for-byte the builder's (tests/ca/test_signing_fast_path.py).


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_length(len(content)) + content


def _der_elements(der: bytes) -> list[bytes]:
    """The TLVs (whole) directly inside the constructed DER element ``der`` (of trusted, library-made DER)."""
    i = 1
    first = der[i]
    i += 1 + (first & 0x7F if first & 0x80 else 0)
    out = []
    while i < len(der):
        start = i
        i += 1
        first = der[i]
        i += 1
        if first & 0x80:
            count = first & 0x7F
            length = int.from_bytes(der[i:i + count], "big")
            i += count
        else:
            length = first
        i += length
        out.append(der[start:i])
    return out


def _der_time(when: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (seconds, Zulu), as the builder writes."""
    if when.tzinfo is not timezone.utc:
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    clock = f"{when.month:02d}{when.day:02d}{when.hour:02d}{when.minute:02d}{when.second:02d}Z".encode()
    if 1950 <= when.year < 2050:
        return b"\x17\x0d" + f"{when.year % 100:02d}".encode() + clock
    return b"\x18\x0f" + f"{when.year:04d}".encode() + clock


def _extension(oid_der: bytes, critical: bool, value: bytes) -> bytes:
    return _tlv(0x30, oid_der + (b"\x01\x01\xff" if critical else b"") + _tlv(0x04, value))


class _LeafTemplate:
    """The constant DER of one issuer's leaves, and its key to sign them with."""

    def __init__(self, issuer_cert: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        self.issuer_cert = issuer_cert
        self.issuer_key = issuer_key
        self.hash = signature_hash(issuer_key)
        self.ec = ec.ECDSA(self.hash)  # the signature algorithm of an EC issuer (one object for every leaf)
        probe_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        probe = _built_leaf("spiffe://probe.invalid/probe", probe_key, datetime(2026, 1, 1, tzinfo=timezone.utc),
                            datetime(2026, 1, 2, tzinfo=timezone.utc), issuer_cert, issuer_key, (), (), 1)
        tbs = _der_elements(probe.tbs_certificate_bytes)
        # version, serial, signature algorithm, issuer, validity, subject, SPKI, [3] extensions
        self.version, self.algorithm, self.issuer, self.subject = tbs[0], tbs[2], tbs[3], tbs[5]
        extensions = _der_elements(_der_elements(tbs[7])[0])
        oids = {ext.oid.dotted_string: der for ext, der in zip(probe.extensions, extensions)}
        self.constant = {
            rsa_key: b"".join(_extension(_oid_der(ext.oid), True, ext.value)
                              for ext in (_LEAF_BASIC_CONSTRAINTS, _LEAF_KEY_USAGE[rsa_key]))
            + oids[ExtensionOID.EXTENDED_KEY_USAGE.dotted_string] for rsa_key in (False, True)}
        self.aki = oids[ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string]
        self.san_oid = _oid_der(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        self.ski_oid = _oid_der(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        self.signature_algorithm = _der_elements(probe.public_bytes(serialization.Encoding.DER))[1]

    def sign(self, spiffe_id: str, public_key: object, not_before: datetime, not_after: datetime,
             serial: int) -> x509.Certificate:
        spki = public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        bits = _der_elements(spki)[1]  # BIT STRING: tag, length, the unused-bits octet (0), the key
        key_bits = bits[3 + (bits[1] & 0x7F if bits[1] & 0x80 else 0):]  # what the SKI hashes (RFC 5280 method 1)
        uri = spiffe_id.encode("ascii")
        extensions = (self.constant[isinstance(public_key, rsa.RSAPublicKey)]
                      + _extension(self.san_oid, False, _tlv(0x30, _tlv(0x86, uri)))
                      + _extension(self.ski_oid, False, _tlv(0x04, hashlib.sha1(key_bits).digest()))
                      + self.aki)
        tbs = _tlv(0x30, self.version + _tlv(0x02, serial.to_bytes(serial.bit_length() // 8 + 1, "big"))
                   + self.algorithm + self.issuer + _tlv(0x30, _der_time(not_before) + _der_time(not_after))
                   + self.subject + spki + _tlv(0xA3, _tlv(0x30, extensions)))
        key = self.issuer_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(tbs, self.ec)
        else:
            signature = key.sign(tbs, padding.PKCS1v15(), self.hash)
        cert = x509.load_der_x509_certificate(
            _tlv(0x30, tbs + self.signature_algorithm + _tlv(0x03, b"\x00" + signature)))
        if cert.tbs_certificate_bytes != tbs:  # what the library reads back is what was signed
            raise ValueError("a leaf assembled from its template does not read back as built")
        return cert


def _oid_der(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


_template_cache: dict[int, _LeafTemplate] = {}


def _leaf_template(issuer_cert: x509.Certificate, issuer_key: object) -> _LeafTemplate | None:
    """The template of leaves signed by ``issuer_key`` as ``issuer_cert`` (a few at most: rotations); None for
    a key type it does not know (the builder signs those)."""
    hit = _template_cache.get(id(issuer_cert))
    if hit is not None and hit.issuer_cert is issuer_cert and hit.issuer_key is issuer_key:
        return hit
    if not isinstance(issuer_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return None
    template = _LeafTemplate(issuer_cert, issuer_key)
    if len(_template_cache) >= _AKI_CACHE_SIZE:
        _template_cache.clear()
    _template_cache[id(issuer_cert)] = template
    return template
