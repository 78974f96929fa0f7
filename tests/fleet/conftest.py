"""Shared helpers for the fleet tests: a local Session (real shell on this machine) and certificates."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshcore.fleet import Host, Result


class LocalSession:
    """Runs the fleet's remote commands in a real shell here, as Fabric would on the host."""

    def __init__(self, host: Host, rewrite=None):
        self.host = host
        self.rewrite = rewrite or (lambda c: c)
        self.commands: list[str] = []

    def run(self, command: str, *, timeout: float = 60) -> Result:
        command = self.rewrite(command)
        self.commands.append(command)
        p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        return Result(p.stdout, p.stderr, p.returncode)


def make_cert(cn: str, uri: str | None = None, *, days: int = 1, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
         .not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    cert = b.sign(key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert, cert_pem, key_pem


@pytest.fixture
def cert_factory():
    return make_cert
