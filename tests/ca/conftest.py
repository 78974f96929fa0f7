"""Shared fixtures for the CA tests: a KEK, a settable clock, an opened CA, and chain verification."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from meshcore.ca import CertificateAuthority

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca-state"


@pytest.fixture
def ca(state_dir: Path, kek: bytes, clock: Clock) -> CertificateAuthority:
    return CertificateAuthority.open(state_dir, kek=kek, clock=clock)


def verify_chain(bundle_pem: str, chain_pem: str, at: datetime) -> list[x509.Certificate]:
    """Verify leaf + intermediates against the bundle as an mTLS client cert; return the built chain."""
    chain = x509.load_pem_x509_certificates(chain_pem.encode())
    store = Store(x509.load_pem_x509_certificates(bundle_pem.encode()))
    verifier = PolicyBuilder().store(store).time(at).build_client_verifier()
    return verifier.verify(chain[0], chain[1:]).chain


@pytest.fixture
def shared_backend(consul_http):
    """A Consul KV state backend (the double, or a real Consul with CONSUL_HTTP_ADDR) private to the test."""
    from meshcore.catalog._consul_settings import ConsulSettings
    from meshcore.state import ConsulStateBackend

    def make() -> ConsulStateBackend:
        return ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "state/")

    yield make
