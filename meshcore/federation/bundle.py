"""SPIFFE trust bundles: the SPIFFE bundle format (a JWK Set) to and from PEM roots (pure).

The SPIFFE Trust Domain and Bundle spec publishes a domain's X.509 roots as a JWK Set: each root
is one key with ``use: "x509-svid"``, its public key (``kty`` with ``crv``/``x``/``y`` or
``n``/``e``) and the certificate itself in ``x5c``; the set carries ``spiffe_sequence`` (grows
with every change) and ``spiffe_refresh_hint`` (seconds between fetches). Keys with another
``use`` (``jwt-svid``) are skipped on import: meshcore validates X.509-SVIDs only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import BundleError

X509_SVID = "x509-svid"
DEFAULT_REFRESH_HINT = 300  # seconds
_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}




def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def jwk_of(cert: x509.Certificate) -> dict[str, Any]:
    """One root as a JWK of the SPIFFE bundle format (``use: x509-svid``, public key, ``x5c``)."""
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": X509_SVID}
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise BundleError(f"root {cert.subject.rfc4514_string()}: curve {key.curve.name} has no JWK name")
        crv, size = _CURVES[key.curve.name]
        point = key.public_numbers()
        jwk.update(kty="EC", crv=crv, x=_b64url(_int_bytes(point.x, size)), y=_b64url(_int_bytes(point.y, size)))
    elif isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        jwk.update(kty="RSA", n=_b64url(_int_bytes(rsa_numbers.n)), e=_b64url(_int_bytes(rsa_numbers.e)))
    else:
        raise BundleError(f"root {cert.subject.rfc4514_string()}: key type {type(key).__name__} is not supported")
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return jwk


def to_spiffe_bundle(roots_pem: str, *, sequence: int, refresh_hint: int = DEFAULT_REFRESH_HINT) -> dict[str, Any]:
    """The SPIFFE bundle (JWK Set) of the PEM ``roots_pem``."""
    certs = load_pem_roots(roots_pem, "the local trust bundle")
    return {"keys": [jwk_of(c) for c in certs], "spiffe_sequence": int(sequence),
            "spiffe_refresh_hint": int(refresh_hint)}


def load_pem_roots(text: str, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError as exc:
        raise BundleError(f"{where}: not PEM certificates: {exc}") from exc
    if not certs:
        raise BundleError(f"{where}: no certificate in it")
    return certs


def _check_key_matches(jwk: dict, cert: x509.Certificate, where: str) -> None:
    """The JWK's public key fields, when present, must be the certificate's key."""
    expected = jwk_of(cert)
    for name in ("kty", "crv", "x", "y", "n", "e"):
        if name in jwk and jwk[name] != expected.get(name):
            raise BundleError(f"{where}: {name} does not match the key of the certificate in x5c")


def parse_spiffe_bundle(data: dict[str, Any], where: str = "bundle") -> tuple[list[x509.Certificate], int | None]:
    """The X.509 roots of a SPIFFE bundle (JWK Set) and its ``spiffe_sequence`` (None when absent)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise BundleError(f"{where}: a SPIFFE bundle is a JSON object with a \"keys\" list (a JWK Set)")
    roots = []
    for i, jwk in enumerate(data["keys"]):
        at = f"{where}: keys[{i}]"
        if not isinstance(jwk, dict):
            raise BundleError(f"{at}: not an object")
        if jwk.get("use") != X509_SVID:
            continue  # jwt-svid authorities and others: not for X.509 validation
        x5c = jwk.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
            raise BundleError(f"{at}: an x509-svid key needs x5c with exactly one certificate (base64 DER)")
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{at}: x5c[0] is not a base64 DER certificate: {exc}") from exc
        _check_key_matches(jwk, cert, at)
        roots.append(cert)
    if not roots:
        raise BundleError(f"{where}: no key with \"use\": \"x509-svid\"; nothing to trust")
    sequence = data.get("spiffe_sequence")
    return roots, sequence if isinstance(sequence, int) else None


def read_bundle_text(text: str, where: str) -> tuple[list[x509.Certificate], int | None]:
    """Roots from either form an operator may have: a SPIFFE bundle (JSON) or PEM certificates."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise BundleError(f"{where}: not valid JSON: {exc}") from exc
        return parse_spiffe_bundle(data, where)
    return load_pem_roots(text, where), None


@dataclass(frozen=True)
class RootInfo:
    subject: str
    sha256: str
    not_after: str


def describe_root(cert: x509.Certificate) -> RootInfo:
    return RootInfo(subject=cert.subject.rfc4514_string(), sha256=cert.fingerprint(hashes.SHA256()).hex(),
                    not_after=cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"))


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def check_roots(roots: list[x509.Certificate], trust_domain: str, where: str,
                now: datetime | None = None) -> None:
    """Refuse what cannot be a domain's roots: a non-CA certificate, an expired one, or a CA whose
    SPIFFE ID names another trust domain (a sign the wrong file was given)."""
    now = now or datetime.now(timezone.utc)
    for cert in roots:
        name = cert.subject.rfc4514_string() or "(empty subject)"
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise BundleError(f"{where}: {name} is not a CA certificate (basicConstraints CA:TRUE); "
                              "import the other domain's root CA bundle, not a workload certificate")
        if cert.not_valid_after_utc <= now:
            raise BundleError(f"{where}: {name} expired at {cert.not_valid_after_utc.isoformat()}; "
                              "ask the other domain for its current bundle")
        for uri in _spiffe_uris(cert):
            td = uri[len("spiffe://"):].split("/", 1)[0]
            if td != trust_domain:
                raise BundleError(f"{where}: {name} is a CA of trust domain {td!r}, not {trust_domain!r}; "
                                  "check --trust-domain and the file")


def pem_of(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


__all__ = ["BundleError", "RootInfo", "X509_SVID", "check_roots", "describe_root", "jwk_of", "load_pem_roots",
           "parse_spiffe_bundle", "pem_of", "read_bundle_text", "to_spiffe_bundle"]
