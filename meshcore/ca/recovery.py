"""Node recovery: how an agent whose node certificate expired gets a new one without a join token.

The agent proves it still holds the private key of the node certificate the CA issued to it last
(recorded in the issued journal at join and at every renewal). It makes a new key and a CSR for its
node identity as for a renewal, and signs with the *old* key the message :func:`recovery_message`:

    b"meshcore-node-recovery-v1" NUL trust_domain NUL node NUL timestamp NUL sha256(CSR DER) hex

The control plane (``POST /v1/agent/recover``, no client certificate: the expired one no longer
passes TLS) checks, in order: the timestamp is within :data:`RECOVERY_SKEW` of its clock; the node
is in the catalog; the CA recorded a node certificate for it (its newest) that is still valid or
expired less than the recovery grace period ago (``--node-recovery-grace``, 30 days by default; holding
the key of a valid one is what a renewal proves too); the signature verifies with *that*
certificate's public key; the node is not revoked and that certificate's issuer was not retired by a
root rotation; the signature was not seen before. Then it signs the CSR, which becomes the newest
record: the old key no longer recovers anything.

Replay is useless: a captured request yields a certificate only for the CSR's key, which stays on
the VM; it is refused anyway once used (the record moved on, and the signature is remembered for the
skew window), and the timestamp bounds it to minutes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

RECOVERY_CONTEXT = b"meshcore-node-recovery-v1"
RECOVERY_SKEW = timedelta(minutes=5)  # how far the request's timestamp may be from the control plane's clock


def csr_digest(csr_pem: str | bytes) -> str:
    """Hex SHA-256 of the CSR's DER encoding (what the proof binds)."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    csr = x509.load_pem_x509_csr(data)
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def recovery_message(trust_domain: str, node: str, timestamp: str, csr_pem: str | bytes) -> bytes:
    """The bytes the agent signs with its old node key (see the module docstring)."""
    return b"\0".join([RECOVERY_CONTEXT, trust_domain.encode(), node.encode(), timestamp.encode(),
                       csr_digest(csr_pem).encode()])


def sign_recovery(private_key: Any, message: bytes) -> str:
    """Base64 signature of ``message`` with the node's (EC or RSA) private key."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        sig = private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(private_key, rsa.RSAPrivateKey):
        sig = private_key.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                    salt_length=padding.PSS.DIGEST_LENGTH), hashes.SHA256())
    else:
        raise TypeError(f"unsupported node key type {type(private_key).__name__}")
    return base64.b64encode(sig).decode("ascii")


def verify_recovery(public_key: Any, message: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is ``message`` signed by the key of ``public_key``."""
    try:
        sig = base64.b64decode(signature_b64.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return False
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                        salt_length=padding.PSS.DIGEST_LENGTH), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


__all__ = ["RECOVERY_CONTEXT", "RECOVERY_SKEW", "csr_digest", "recovery_message", "sign_recovery",
           "verify_recovery"]
