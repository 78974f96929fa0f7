"""Workload-side helpers: make a key and CSR on the VM, and describe a certificate for ``meshctl certs``.

The CA never sees a leaf private key: the agent calls :func:`new_private_key` and :func:`make_csr`
on the VM and sends only the CSR.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcore.errors import CAError

from ._spiffeid import parse_workload_id
from .model import rfc3339


KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")
DEFAULT_KEY_TYPE = "ec-p256"


def check_key_type(key_type: str) -> str:
    """Return ``key_type`` when it is one of :data:`KEY_TYPES`, else raise :class:`CAError` listing them."""
    if key_type not in KEY_TYPES:
        raise CAError(f"key type {key_type!r} is not supported; use one of {', '.join(KEY_TYPES)}")
    return key_type


def new_private_key(key_type: str = DEFAULT_KEY_TYPE) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A fresh private key: ECDSA P-256 by default, or P-384, RSA 2048 / 3072 (see :data:`KEY_TYPES`)."""
    check_key_type(key_type)
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.split("-")[1]))


def key_type_of(key: Any) -> str:
    """The :data:`KEY_TYPES` name of a private or public key; CAError for anything else."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        names = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
        if key.curve.name in names:
            return names[key.curve.name]
        raise CAError(f"ECDSA curve {key.curve.name} is not supported; use P-256 or P-384")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < 2048:
            raise CAError(f"a {key.key_size}-bit RSA key is too weak; use at least 2048 bits")
        return f"rsa-{key.key_size}"
    raise CAError(f"key type {type(key).__name__} is not supported; use ECDSA P-256/P-384 or RSA")


def signature_hash(key: Any) -> hashes.SHA256 | hashes.SHA384:
    """The digest to sign with ``key``: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def make_csr(key: Any, spiffe_id: str) -> str:
    """PEM CSR signed by ``key`` whose only SAN is the URI ``spiffe_id`` (the subject is left empty:
    the CA sets it)."""
    parse_workload_id(spiffe_id, CAError)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_to_pem(key: Any) -> str:
    """Unencrypted PKCS#8 PEM of ``key`` (the agent keeps it in a 0600 file on the VM)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def cert_info(pem: str | bytes) -> dict[str, Any]:
    """Describe the first certificate in ``pem``: spiffe_id (or None), serial (hex), not_before,
    not_after (RFC 3339), issuer and subject (RFC 4514), is_ca."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise CAError(f"not a PEM certificate: {exc}") from exc
    spiffe_id = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
        spiffe_id = uris[0] if uris else None
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "spiffe_id": spiffe_id,
        "serial": format(cert.serial_number, "x"),
        "not_before": rfc3339(cert.not_valid_before_utc),
        "not_after": rfc3339(cert.not_valid_after_utc),
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "is_ca": is_ca,
    }
