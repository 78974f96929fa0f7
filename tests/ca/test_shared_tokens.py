"""Join tokens shared by control plane replicas in Consul KV: hashed, sealed, used once across replicas."""

import threading
from datetime import timedelta

import pytest

from meshcore.ca.tokens import SHARED_PREFIX, SharedJoinTokenStore, _hash, open_join_tokens
from meshcore.errors import JoinTokenError
from meshcore.state import DirBackend


def test_token_made_on_one_replica_is_used_on_another_once(shared_backend, kek, clock):
    a, b = SharedJoinTokenStore(shared_backend(), kek, clock), SharedJoinTokenStore(shared_backend(), kek, clock)
    token = a.create("vm-1")
    b.consume(token, "vm-1")
    with pytest.raises(JoinTokenError, match="already used"):
        a.consume(token, "vm-1")
    assert [t["state"] for t in a.list()] == ["used"]


def test_refusals_say_why(shared_backend, kek, clock):
    store = SharedJoinTokenStore(shared_backend(), kek, clock)
    with pytest.raises(JoinTokenError, match="unknown"):
        store.consume("mjt_nope", "vm-1")
    token = store.create("vm-1", ttl=timedelta(minutes=5))
    with pytest.raises(JoinTokenError, match="another node"):
        store.consume(token, "vm-2")
    clock.advance(timedelta(minutes=6))
    with pytest.raises(JoinTokenError, match="expired"):
        store.consume(token, "vm-1")
    clock.advance(timedelta(days=8))
    assert store.prune() == 1 and store.list() == []


def test_kv_holds_only_the_hash_and_a_sealed_entry(shared_backend, kek, clock):
    backend = shared_backend()
    token = SharedJoinTokenStore(backend, kek, clock).create("vm-secret-node")
    [entry] = backend.list(SHARED_PREFIX)
    assert entry.key == SHARED_PREFIX + _hash(token)
    assert token.encode() not in entry.value and b"vm-secret-node" not in entry.value
    assert entry.value.startswith(b"MESHCORE-SEALED-1\n")


class _PutBarrier:
    """A backend whose CAS writes wait until both replicas have read the token: the race made certain."""

    def __init__(self, inner, barrier):
        self._inner, self._barrier = inner, barrier

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put(self, key, value, *, cas=None):
        if cas:
            self._barrier.wait(timeout=10)
        return self._inner.put(key, value, cas=cas)


@pytest.mark.parametrize("read_first", [False, True], ids=["same-moment", "both-read-before-writing"])
def test_two_replicas_presented_one_token_at_the_same_moment_accept_it_once(shared_backend, kek, clock, read_first):
    token = SharedJoinTokenStore(shared_backend(), kek, clock).create("vm-1")
    write_barrier = threading.Barrier(2)
    replicas = [SharedJoinTokenStore(_PutBarrier(shared_backend(), write_barrier) if read_first else shared_backend(),
                                     kek, clock) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def join(store):
        start.wait(timeout=10)
        try:
            store.consume(token, "vm-1")
            outcomes.append("accepted")
        except JoinTokenError as exc:
            outcomes.append(f"refused: {exc}")

    threads = [threading.Thread(target=join, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["accepted", "refused"], outcomes
    assert "already used" in next(o for o in outcomes if o.startswith("refused"))


def test_open_join_tokens_keeps_the_directory_files(tmp_path, kek, clock):
    store = open_join_tokens(DirBackend(tmp_path), kek, clock)
    token = store.create("vm-1")
    store.consume(token, "vm-1")
    assert (tmp_path / "join-tokens.sealed").exists()


def test_only_the_leader_prunes_long_expired_tokens(shared_backend, kek, clock):
    """The daemon runs the cleanup as singleton work (LeaderWork): a follower never deletes, the leader does
    at once when it starts leading, and stops when it loses the lock."""
    import time

    from meshcore.controlplane.daemon import _every
    from meshcore.controlplane.leadership import LeaderWork

    from ..controlplane._leadership import ManualLeadership

    store = SharedJoinTokenStore(shared_backend(), kek, clock)
    store.create("vm-1", ttl=timedelta(minutes=5))
    clock.advance(timedelta(days=8))
    calls: list[int] = []

    def prune() -> int:
        calls.append(store.prune())
        return calls[-1]

    lead = ManualLeadership("cp-a")
    job = LeaderWork(lead, "join-token-cleanup", lambda stop: _every(3600, stop, prune, "join token cleanup")).start()
    try:
        assert not job.running() and calls == [] and len(store.list()) == 1
        lead.set(True)
        deadline = time.monotonic() + 10
        while not calls:
            assert time.monotonic() < deadline, "the leader's cleanup never ran"
            time.sleep(0.02)
        assert calls == [1] and store.list() == []
        lead.set(False, leader="cp-b")
        assert not job.running()
    finally:
        job.stop()


def test_a_token_revoked_on_one_replica_is_refused_on_another(shared_backend, kek, clock):
    a, b = SharedJoinTokenStore(shared_backend(), kek, clock), SharedJoinTokenStore(shared_backend(), kek, clock)
    token = a.create("vm-1")
    assert a.revoke(_hash(token)) and not b.revoke(_hash(token)), "once"
    with pytest.raises(JoinTokenError, match="revoked"):
        b.consume(token, "vm-1")
    assert [t["state"] for t in b.list()] == ["revoked"]
    assert not a.revoke("0" * 64), "unknown"
