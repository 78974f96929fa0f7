"""The CA shared by control plane replicas in Consul KV: one root, every replica signs, sees the others' records."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from meshcore import naming
from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.ca._shared import AUTHORITY_KEY, ISSUED_PREFIX
from meshcore.errors import CAError
from tests.state._wait import wait_for


from .conftest import verify_chain

WEB = "spiffe://cluster.local/ns/default/sa/web"


@pytest.fixture
def replicas(shared_backend, kek, clock, tmp_path):
    opened: list[CertificateAuthority] = []

    def open_one(name: str, **kw) -> CertificateAuthority:
        ca = CertificateAuthority.open(tmp_path / name, backend=shared_backend(), kek=kek, clock=clock, **kw)
        opened.append(ca)
        return ca

    yield open_one
    for ca in opened:
        ca.close()


def _sign(ca, spiffe_id=WEB, **kw):
    return ca.sign_csr(make_csr(new_private_key(), spiffe_id), spiffe_id=spiffe_id, **kw)


def test_a_replica_started_second_loads_the_first_ones_ca(replicas, clock):
    a = replicas("a")
    b = replicas("b")
    assert b.bundle_pem() == a.bundle_pem() and b.signer_key_id() == a.signer_key_id()
    leaf = _sign(b)
    verify_chain(a.bundle_pem(), leaf.chain_pem, clock.now)


def test_first_start_race_creates_one_root(shared_backend, kek, clock, tmp_path):
    barrier = threading.Barrier(3)
    out: list[CertificateAuthority] = []

    def start(i):
        barrier.wait(timeout=10)
        out.append(CertificateAuthority.open(tmp_path / f"r{i}", backend=shared_backend(), kek=kek, clock=clock))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(out) == 3 and len({ca.bundle_pem() for ca in out}) == 1
    finally:
        for ca in out:
            ca.close()


def test_every_replica_sees_the_others_issued_certificates(replicas):
    a, b = replicas("a"), replicas("b")
    issued = _sign(a, node="vm-1")
    wait_for(lambda: [c.serial for c in b.issued()] == [issued.serial], what="b to see a's leaf")
    newer = _sign(b, node="vm-1")
    wait_for(lambda: [c.serial for c in a.issued()] == [newer.serial], what="a to see b's newer leaf")


def test_a_revocation_on_one_replica_takes_effect_on_all(replicas, clock):
    a, b = replicas("a"), replicas("b")
    node_id = naming.node_spiffe_id("cluster.local", "vm-1")
    leaf = _sign(a, spiffe_id=node_id, node="vm-1")
    der = base64.b64decode("".join(leaf.cert_pem.splitlines()[1:-1]))
    ended: list[str] = []
    a.add_revocation_listener(ended.append)
    assert a.node_certificate_refusal("vm-1", der) is None
    b.revoke_node("vm-1", reason="stolen", by="test")
    assert b.node_certificate_refusal("vm-1", der) is not None  # at once where it was revoked
    wait_for(lambda: a.node_certificate_refusal("vm-1", der) is not None, what="a to refuse the revoked node")
    wait_for(lambda: ended == ["vm-1"], what="a's revocation listener")
    assert "stolen" in a.node_certificate_refusal("vm-1", der)


def test_a_rotation_driven_by_one_replica_is_followed_by_the_others(replicas, clock):
    a, b = replicas("a"), replicas("b")
    old_signer = a.signer_key_id()
    a.begin_rotation()
    wait_for(lambda: b.rotation_phase == "preparing" and len(b.roots()) == 2, what="b to follow preparing")
    assert b.bundle_pem() == a.bundle_pem() and b.signer_key_id() == old_signer
    a.activate_rotation()
    wait_for(lambda: b.rotation_phase == "rotating", what="b to follow rotating")
    assert b.signer_key_id() == a.signer_key_id() != old_signer
    leaf = _sign(b)
    verify_chain(a.bundle_pem(), leaf.chain_pem, clock.now)
    a.finish_rotation(force=True)
    wait_for(lambda: b.rotation_phase == "idle" and len(b.roots()) == 1, what="b to follow the finish")
    assert [r.subject for r in b.revocations() if r.kind == "issuer"] == [old_signer]


def test_a_held_rotation_released_by_one_replica_is_released_on_the_others(replicas):
    a, b = replicas("a"), replicas("b")
    a.begin_rotation(hold=True)
    wait_for(lambda: b.rotation_phase == "preparing" and b.rotation_held, what="b to follow the held rotation")
    assert b.release_rotation() is True
    wait_for(lambda: not a.rotation_held, what="a to follow the release")
    assert a.rotation_phase == "preparing" and a.bundle_pem() == b.bundle_pem()


def test_a_step_on_a_stale_copy_is_refused_and_the_replica_follows(replicas, shared_backend, kek, clock, tmp_path):
    a = replicas("a")
    b = replicas("b")
    b._shared.stop()  # b stops following: its copy goes stale
    a.begin_rotation()
    with pytest.raises(CAError, match="changed by another control plane replica"):
        b.begin_rotation()
    assert b.rotation_phase == "preparing" and b.bundle_pem() == a.bundle_pem()


def test_nothing_secret_in_kv(replicas, shared_backend, kek):
    a = replicas("a")
    _sign(a, node="vm-1")
    a.close()
    entries = shared_backend().list("")
    assert {e.key for e in entries} >= {AUTHORITY_KEY} and any(e.key.startswith(ISSUED_PREFIX) for e in entries)
    secrets = [k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()) for k in (a._root.key, a._intermediate.key)]
    for e in entries:
        assert b"PRIVATE KEY" not in e.value
        for der in secrets:
            assert der not in e.value and base64.b64encode(der) not in e.value


def test_wrong_kek_or_trust_domain_is_refused(replicas, shared_backend, tmp_path, clock):
    replicas("a")
    with pytest.raises(CAError, match="wrong key-encryption key"):
        CertificateAuthority.open(tmp_path / "x", backend=shared_backend(), kek=b"\1" * 32, clock=clock)
    with pytest.raises(CAError, match="trust domain"):
        replicas("y", trust_domain="other.example")


def test_the_intermediate_renewed_by_one_replica_is_used_by_the_others(replicas, clock):
    a, b = replicas("a"), replicas("b")
    before = a.signer_key_id()
    clock.advance(timedelta(days=340))
    _sign(a)  # due: a renews it
    assert a.signer_key_id() != before
    wait_for(lambda: b.signer_key_id() == a.signer_key_id(), what="b to follow the renewed intermediate")


def test_state_consul_lost_is_written_back_by_the_replicas_holding_it(replicas, shared_backend, tmp_path, kek, clock):
    a = replicas("a")
    a.revoke_node("vm-9", reason="lost laptop")
    bundle = a.bundle_pem()
    backend = shared_backend()
    for entry in backend.list(""):  # Consul restarted empty / restored from an old snapshot
        backend.delete(entry.key)
    wait_for(lambda: backend.get(AUTHORITY_KEY) is not None and backend.list("ca/revoked/") != [],
             what="the replica to write the CA and the revocation back")
    later = replicas("later")  # a replica started afterwards loads that CA: no second root
    assert later.bundle_pem() == bundle and later.node_revocation("vm-9").reason == "lost laptop"


def test_a_host_copy_brings_the_ca_back_when_no_replica_runs(shared_backend, kek, clock, tmp_path):
    first = CertificateAuthority.open(tmp_path / "host", backend=shared_backend(), kek=kek, clock=clock)
    bundle = first.bundle_pem()
    first.close()
    backend = shared_backend()
    for entry in backend.list(""):
        backend.delete(entry.key)
    again = CertificateAuthority.open(tmp_path / "host", backend=shared_backend(), kek=kek, clock=clock)
    try:
        assert again.bundle_pem() == bundle
        assert b"PRIVATE KEY" not in (tmp_path / "host" / "shared-ca.sealed").read_bytes()
    finally:
        again.close()


class _CallsByThread:
    """A backend that records which thread called it."""

    def __init__(self, inner):
        self._inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name in ("get", "put", "put_all", "delete", "list", "watch"):
            def call(*a, **kw):
                self.calls.append((threading.get_ident(), name))
                return attr(*a, **kw)
            return call
        return attr


def test_signing_and_revocation_checks_make_no_consul_call_in_the_request(shared_backend, kek, clock, tmp_path):
    backend = _CallsByThread(shared_backend())
    ca = CertificateAuthority.open(tmp_path / "r", backend=backend, kek=kek, clock=clock)
    try:
        node_id = naming.node_spiffe_id("cluster.local", "vm-1")
        leaf = _sign(ca, spiffe_id=node_id, node="vm-1")
        der = base64.b64decode("".join(leaf.cert_pem.splitlines()[1:-1]))
        me = threading.get_ident()
        before = [c for c in backend.calls if c[0] == me]
        for _ in range(5):
            _sign(ca)
            assert ca.node_certificate_refusal("vm-1", der) is None
        assert [c for c in backend.calls if c[0] == me] == before
        wait_for(lambda: any(name == "put_all" for _, name in backend.calls), what="the records written behind")
    finally:
        ca.close()


class _HeldRecordWrites(_CallsByThread):
    """A backend whose writes of issued records wait until the test lets them through."""

    def __init__(self, inner):
        super().__init__(inner)
        self.let_through = threading.Event()

    def put_all(self, puts):
        if any(p.key.startswith(ISSUED_PREFIX) for p in puts):
            assert self.let_through.wait(30), "the test never let the record writes through"
        return self._inner.put_all(puts)


def _sign_in_thread(ca, node):
    out: list = []
    t = threading.Thread(target=lambda: out.append(_sign(ca, node=node)), daemon=True)
    t.start()
    return t, out


def test_during_a_rotation_a_signature_is_answered_once_its_record_is_in_kv(shared_backend, kek, clock, tmp_path,
                                                                           monkeypatch):
    """A replica killed right after answering must not lose the record of a leaf renewed for the rotation (the CA
    would count it on the old root and finishing would wait for a renewal that happened); outside one, the
    record is still written behind and signing never waits on Consul."""
    import meshcore.ca.authority as authority

    monkeypatch.setattr(authority, "DURABLE_WAIT", 60.0)  # a stalled machine must not end the wait under test
    backend = _HeldRecordWrites(shared_backend())
    ca = CertificateAuthority.open(tmp_path / "r", backend=backend, kek=kek, clock=clock)
    try:
        idle, out = _sign_in_thread(ca, "vm-idle")
        idle.join(10)
        assert out and not idle.is_alive(), "outside a rotation a signature waits for nothing"
        backend.let_through.set()
        wait_for(lambda: any(out[0].serial in e.value.decode() for e in backend.list(ISSUED_PREFIX)),
                 what="the idle record written behind")
        backend.let_through.clear()
        ca.begin_rotation()
        ca.activate_rotation()
        during, out = _sign_in_thread(ca, "vm-1")
        during.join(1.0)
        assert during.is_alive() and not out, "answered before its record reached the shared state"
        backend.let_through.set()
        during.join(10)
        assert out and not during.is_alive()
        stored = [e for e in backend.list(ISSUED_PREFIX) if out[0].serial in e.value.decode()]
        assert len(stored) == 1, "the record is in KV when the signature is answered"
    finally:
        backend.let_through.set()
        ca.close()


def test_a_signature_during_a_rotation_is_answered_when_kv_does_not_take_the_record(shared_backend, kek, clock,
                                                                                     tmp_path, monkeypatch):
    import meshcore.ca.authority as authority

    monkeypatch.setattr(authority, "DURABLE_WAIT", 0.5)
    backend = _HeldRecordWrites(shared_backend())
    ca = CertificateAuthority.open(tmp_path / "r", backend=backend, kek=kek, clock=clock)
    try:
        ca.begin_rotation()
        during, out = _sign_in_thread(ca, "vm-1")
        during.join(20)
        assert out and not during.is_alive(), "signing must not hang on Consul"
    finally:
        backend.let_through.set()
        ca.close()


def test_after_consul_restarted_empty_the_replicas_keep_following_each_other(consul_http, replicas):
    double = consul_http.require_double("restarts Consul with an empty data directory")
    a, b = replicas("a"), replicas("b")
    bundle = a.bundle_pem()
    double.restart(empty=True)  # KV gone, the raft index back at the start
    wait_for(lambda: _kv_has_ca(consul_http), what="a replica to write the CA back")
    assert a.bundle_pem() == b.bundle_pem() == bundle
    wait_for(lambda: _began(a), what="a to begin a rotation (refused while its copy is behind the written-back CA)")
    wait_for(lambda: b.rotation_phase == "preparing", what="b to follow a rotation begun after the restart")


def _began(ca) -> bool:
    try:
        ca.begin_rotation()  # at the new, lower indexes
        return True
    except CAError as exc:
        assert "changed by another control plane replica" in str(exc)
        return False


def _kv_has_ca(consul_http) -> bool:
    import requests

    r = requests.get(f"{consul_http.address}/v1/kv/{consul_http.kv_prefix}state/{AUTHORITY_KEY}", timeout=5)
    return r.status_code == 200


def test_records_past_their_retention_leave_kv(replicas, shared_backend, clock):
    a = replicas("a")
    _sign(a, ttl=timedelta(hours=1))
    a._journal.flush()
    assert len(shared_backend().list(ISSUED_PREFIX)) == 1
    clock.advance(timedelta(days=2))  # past the leaf's 24 h on record
    a._journal.compact(clock.now)
    assert shared_backend().list(ISSUED_PREFIX) == [] and a.recent() == []
