"""Node identities: their own TTL, recovery with the key of an expired certificate, revocation, and
the intermediates a finished root rotation retires."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.ca.authority import REVOKED_FILE
from meshcore.ca.model import rfc3339
from meshcore.ca.recovery import recovery_message, sign_recovery
from meshcore.errors import CAError, SigningRefused

from .conftest import Clock

NODE = "vm1"
NODE_ID = f"spiffe://cluster.local/meshcore/node/{NODE}"


def _open(state_dir: Path, kek: bytes, clock: Clock, **kw) -> CertificateAuthority:
    return CertificateAuthority.open(state_dir, kek=kek, clock=clock, leaf_ttl=timedelta(minutes=2), **kw)


def _join(ca: CertificateAuthority, node: str = NODE):
    key = new_private_key()
    issued = ca.sign_csr(make_csr(key, f"spiffe://cluster.local/meshcore/node/{node}"),
                         spiffe_id=f"spiffe://cluster.local/meshcore/node/{node}", node=node, ttl=ca.node_ttl)
    return key, issued


def _proof(ca: CertificateAuthority, old_key, clock: Clock, node: str = NODE, skew: timedelta = timedelta(0)):
    new_key = new_private_key()
    csr = make_csr(new_key, f"spiffe://cluster.local/meshcore/node/{node}")
    ts = rfc3339(clock.now + skew)
    return csr, ts, sign_recovery(old_key, recovery_message(ca.trust_domain, node, ts, csr))


def _cert(issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem.encode())


def test_node_certificates_have_their_own_ttl(state_dir: Path, kek: bytes, clock: Clock) -> None:
    ca = _open(state_dir, kek, clock, node_ttl=timedelta(days=7))
    _, issued = _join(ca)
    assert issued.not_after - clock.now == timedelta(days=7)
    with pytest.raises(CAError, match="node_ttl"):
        _open(state_dir, kek, clock, node_ttl=timedelta(0))


def test_an_expired_node_certificate_stays_on_record_for_the_grace(state_dir: Path, kek: bytes, clock: Clock) -> None:
    ca = _open(state_dir, kek, clock, node_ttl=timedelta(minutes=5), recovery_grace=timedelta(days=30))
    _, issued = _join(ca)
    clock.advance(timedelta(days=2))
    assert [c.serial for c in ca.issued() if c.node == NODE] == []
    assert [c.serial for c in ca.recent() if c.node == NODE] == [issued.serial]
    reopened = _open(state_dir, kek, clock, node_ttl=timedelta(minutes=5), recovery_grace=timedelta(days=30))
    assert [c.serial for c in reopened.recent() if c.node == NODE] == [issued.serial]
    clock.advance(timedelta(days=29))
    assert [c for c in reopened.recent() if c.node == NODE] == []


def test_recovery_with_the_key_of_the_expired_certificate(state_dir: Path, kek: bytes, clock: Clock) -> None:
    ca = _open(state_dir, kek, clock, node_ttl=timedelta(minutes=5))
    key, old = _join(ca)
    clock.advance(timedelta(days=3))  # the control plane was down; the node certificate expired long ago
    csr, ts, sig = _proof(ca, key, clock)
    new = ca.recover_node(NODE, csr, timestamp=ts, signature=sig)
    assert new.spiffe_id == NODE_ID and new.serial != old.serial
    assert new.not_after - clock.now == timedelta(minutes=5)
    # the same request again (a replay) is refused: the record moved on to the new certificate
    with pytest.raises(SigningRefused):
        ca.recover_node(NODE, csr, timestamp=ts, signature=sig)
    # and the old key recovers nothing any more
    csr2, ts2, sig2 = _proof(ca, key, clock)
    with pytest.raises(SigningRefused, match="does not verify"):
        ca.recover_node(NODE, csr2, timestamp=ts2, signature=sig2)


def test_recovery_refusals(state_dir: Path, kek: bytes, clock: Clock) -> None:
    ca = _open(state_dir, kek, clock, node_ttl=timedelta(minutes=5), recovery_grace=timedelta(days=30))
    key, _ = _join(ca)
    clock.advance(timedelta(hours=1))
    thief = new_private_key()
    csr, ts, sig = _proof(ca, thief, clock)
    with pytest.raises(SigningRefused, match="does not verify"):
        ca.recover_node(NODE, csr, timestamp=ts, signature=sig)
    csr, ts, sig = _proof(ca, key, clock, skew=timedelta(minutes=10))
    with pytest.raises(SigningRefused, match="clock"):
        ca.recover_node(NODE, csr, timestamp=ts, signature=sig)
    csr, ts, sig = _proof(ca, key, clock, node="vm2")  # never joined
    with pytest.raises(SigningRefused, match="no node certificate"):
        ca.recover_node("vm2", csr, timestamp=ts, signature=sig)
    # a proof for another CSR than the one sent
    csr, ts, sig = _proof(ca, key, clock)
    other = make_csr(new_private_key(), NODE_ID)
    with pytest.raises(SigningRefused, match="does not verify"):
        ca.recover_node(NODE, other, timestamp=ts, signature=sig)
    clock.advance(timedelta(days=31))  # past the grace
    csr, ts, sig = _proof(ca, key, clock)
    with pytest.raises(SigningRefused, match="no node certificate"):
        ca.recover_node(NODE, csr, timestamp=ts, signature=sig)


def test_revocation_ends_the_node_certificates_and_survives_a_restart(state_dir: Path, kek: bytes,
                                                                       clock: Clock) -> None:
    ca = _open(state_dir, kek, clock)
    ended: list[str] = []
    ca.add_revocation_listener(ended.append)
    key, before = _join(ca)
    assert ca.node_certificate_refusal(NODE, _cert(before)) is None and not ca.is_revoked(NODE)
    clock.advance(timedelta(seconds=30))
    ca.revoke_node(NODE, reason="VM lost", by="admin")
    assert ended == [NODE]
    assert "revoked" in (ca.node_certificate_refusal(NODE, _cert(before)) or "")
    assert ca.is_revoked(NODE) and ca.is_revoked(NODE, _cert(before).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER))
    # recovery with the revoked key is refused
    clock.advance(timedelta(seconds=1))
    csr, ts, sig = _proof(ca, key, clock)
    with pytest.raises(SigningRefused, match="revoked"):
        ca.recover_node(NODE, csr, timestamp=ts, signature=sig)
    # a new join (new token) in the same second is honoured: it is not backdated before the revocation
    _, after = _join(ca)
    assert ca.node_certificate_refusal(NODE, _cert(after)) is None
    # durable, append-only
    lines = (state_dir / REVOKED_FILE).read_text().splitlines()
    assert len(lines) == 1 and '"node":"vm1"' in lines[0]
    reopened = _open(state_dir, kek, clock)
    assert reopened.node_certificate_refusal(NODE, _cert(before)) is not None
    assert reopened.node_certificate_refusal(NODE, _cert(after)) is None
    with pytest.raises(CAError, match="not a node name"):
        ca.revoke_node("x/../n2")


def test_finishing_a_rotation_retires_the_old_intermediates(ca: CertificateAuthority, clock: Clock) -> None:
    _, old = _join(ca)  # signed by the old intermediate
    ca.begin_rotation()
    _, prepared = _join(ca, "vm2")  # renewed while preparing: still the old intermediate
    ca.activate_rotation()
    _, renewed = _join(ca, "vm3")  # signed by the new intermediate
    assert all(ca.node_certificate_refusal(n, _cert(c)) is None
               for n, c in ((NODE, old), ("vm2", prepared), ("vm3", renewed)))
    ca.finish_rotation(force=True)
    assert "root rotation" in (ca.node_certificate_refusal(NODE, _cert(old)) or "")
    assert "root rotation" in (ca.node_certificate_refusal("vm2", _cert(prepared)) or "")
    assert ca.node_certificate_refusal("vm3", _cert(renewed)) is None
    # after a restart too
    reopened = CertificateAuthority.open(ca.state_dir, kek=ca._kek, clock=clock)
    assert reopened.node_certificate_refusal("vm2", _cert(prepared)) is not None
    assert reopened.node_certificate_refusal("vm3", _cert(renewed)) is None
