"""An external upstream CA: an intermediate signed by the operator's own root, imported from files.

:func:`load_upstream_ca` reads the signing certificate, its key and the issuing chain once and
checks them (a CA, allowed to sign certificates, SPIFFE-conformant for the trust domain, the key
matches, the chain reaches a self-signed root); the CA then stores them sealed like its own keys.
Every refusal says which file is wrong and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from meshcore.errors import CAError

from .keys import key_type_of


@dataclass(frozen=True)
class UpstreamCA:
    """A checked external signing CA: ``cert`` signs leaves with ``key``; ``chain`` holds the
    certificates between it and ``root`` (often none); ``root`` is the operator's trust anchor."""

    cert: x509.Certificate
    key: Any
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _certs(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CAError(f"{path} is not a PEM {what}: {exc}") from exc
    if not certs:
        raise CAError(f"{path} holds no certificate")
    return certs


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_signing_cert(cert: x509.Certificate, trust_domain: str, where: str) -> None:
    """Refuse ``cert`` as a SPIFFE signing certificate for ``trust_domain`` (X509-SVID spec 4.1, 4.3)."""
    if not _is_ca(cert):
        raise CAError(f"{where} is not a CA certificate (basicConstraints CA:TRUE is missing); "
                      "give the intermediate CA certificate meshcore should sign with, not a leaf")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAError(f"{where}: its keyUsage lacks keyCertSign, so it may not sign certificates")
    except x509.ExtensionNotFound:
        pass
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:  # pragma: no cover - _is_ca checked it
        bc = None
    if bc is not None and bc.path_length is not None and bc.path_length < 0:
        raise CAError(f"{where}: invalid pathLenConstraint {bc.path_length}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    expected = f"spiffe://{trust_domain}"
    for uri in uris:
        if uri.startswith("spiffe://") and uri != expected:
            raise CAError(
                f"{where} carries the SPIFFE ID {uri}; a signing certificate for trust domain {trust_domain!r} "
                f"may only carry {expected} (no path, same trust domain)"
            )
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    for general in nc.excluded_subtrees or []:
        if isinstance(general, x509.UniformResourceIdentifier) and trust_domain.endswith(general.value.lstrip(".")):
            raise CAError(f"{where}: its name constraints exclude {general.value}, which covers {trust_domain!r}")


def load_upstream_ca(
    cert_file: str | Path,
    key_file: str | Path,
    chain_file: str | Path | None,
    *,
    trust_domain: str,
    now: datetime | None = None,
) -> UpstreamCA:
    """Read and check an operator's signing CA; raise :class:`CAError` saying what is wrong and where."""
    now = now or datetime.now(timezone.utc)
    cert_file, key_file = Path(cert_file), Path(key_file)
    certs = _certs(_read(cert_file, "CA certificate"), cert_file, "certificate")
    cert = certs[0]
    check_signing_cert(cert, trust_domain, f"--ca-cert {cert_file}")
    if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now:
        raise CAError(f"--ca-cert {cert_file} is valid from {cert.not_valid_before_utc.isoformat()} to "
                      f"{cert.not_valid_after_utc.isoformat()}, not now; renew it with your root CA")
    try:
        key = serialization.load_pem_private_key(_read(key_file, "CA key"), password=None)
    except (ValueError, TypeError) as exc:
        raise CAError(f"--ca-key {key_file} is not an unencrypted PEM private key: {exc}") from exc
    key_type_of(key)  # refuses unsupported curves and weak RSA keys, naming them
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
        raise CAError(f"--ca-key {key_file} does not match --ca-cert {cert_file} (a different key pair)")

    issuers = certs[1:]
    if chain_file is not None:
        issuers += _certs(_read(Path(chain_file), "CA chain"), Path(chain_file), "certificate chain")
    path: list[x509.Certificate] = [cert]
    while not _self_signed(path[-1]):
        child = path[-1]
        parent = next((c for c in issuers if c.subject == child.issuer and c not in path), None)
        if parent is None:
            raise CAError(
                f"cannot find the issuer of {child.subject.rfc4514_string()!r}; pass --ca-chain FILE with every "
                "certificate up to and including your self-signed root"
            )
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CAError(f"{child.subject.rfc4514_string()!r} was not signed by "
                          f"{parent.subject.rfc4514_string()!r} in the chain file") from exc
        if not _is_ca(parent):
            raise CAError(f"{parent.subject.rfc4514_string()!r} in the chain is not a CA certificate")
        if parent.not_valid_after_utc <= now:
            raise CAError(f"{parent.subject.rfc4514_string()!r} in the chain expired at "
                          f"{parent.not_valid_after_utc.isoformat()}")
        path.append(parent)
    root = path[-1]
    return UpstreamCA(cert=cert, key=key, chain=tuple(path[1:-1]), root=root)


def describe(cert: x509.Certificate) -> dict[str, str]:
    """Subject, SHA-256 fingerprint and validity of a CA certificate (for ``GET /v1/ca``)."""
    from cryptography.hazmat.primitives import hashes

    from .model import rfc3339

    return {
        "subject": cert.subject.rfc4514_string(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_before": rfc3339(cert.not_valid_before_utc),
        "not_after": rfc3339(cert.not_valid_after_utc),
    }

