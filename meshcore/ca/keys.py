"""Workload-side helpers: make a key and CSR on the VM, and describe a certificate for ``meshctl certs``.

The CA never sees a leaf private key: the agent calls :func:`new_private_key` and :func:`make_csr`
on the VM and sends only the CSR.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.errors import CAError

from ._spiffeid import parse_workload_id
from .model import rfc3339


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> str:
    """PEM CSR signed by ``key`` whose only SAN is the URI ``spiffe_id`` (the subject is left empty:
    the CA sets it)."""
    parse_workload_id(spiffe_id, CAError)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .sign(key, hashes.SHA256())
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
