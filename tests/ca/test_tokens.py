"""JoinTokenStore: single use, expiry, node scope, hashing, concurrency."""

from __future__ import annotations

import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from meshcore.ca import JoinTokenStore
from meshcore.errors import CAError, JoinTokenError

from .conftest import Clock


@pytest.fixture
def store(tmp_path: Path, kek: bytes, clock: Clock) -> JoinTokenStore:
    return JoinTokenStore(tmp_path / "state" / "join-tokens", kek, clock=clock)


def test_token_is_consumed_once(store: JoinTokenStore, clock: Clock) -> None:
    token = store.create("vm1")
    assert len(token) >= 22 and all(c.isalnum() or c in "-_" for c in token)
    store.consume(token, "vm1")
    clock.advance(timedelta(minutes=5))
    with pytest.raises(JoinTokenError, match=r"already used \(at 2030-01-01T12:00:00Z\)"):
        store.consume(token, "vm1")


def test_expired_token_is_refused(store: JoinTokenStore, clock: Clock) -> None:
    token = store.create("vm1", ttl=timedelta(minutes=10))
    clock.advance(timedelta(minutes=11))
    with pytest.raises(JoinTokenError, match=r"expired \(at 2030-01-01T12:10:00Z\)"):
        store.consume(token, "vm1")


def test_token_for_another_node_is_refused_without_naming_it(store: JoinTokenStore) -> None:
    token = store.create("secret-node-name")
    with pytest.raises(JoinTokenError, match="scoped to another node") as err:
        store.consume(token, "vm2")
    assert "secret-node-name" not in str(err.value)
    store.consume(token, "secret-node-name")  # the refusal did not burn the token


def test_unknown_token_is_refused(store: JoinTokenStore) -> None:
    store.create("vm1")
    with pytest.raises(JoinTokenError, match="unknown join token"):
        store.consume("not-a-token", "vm1")


def test_list_shows_metadata_only(store: JoinTokenStore, clock: Clock) -> None:
    used = store.create("vm1")
    fresh = store.create("vm2", ttl=timedelta(hours=2))
    store.consume(used, "vm1")
    rows = {r["node"]: r for r in store.list()}
    assert rows["vm1"]["used"] == "2030-01-01T12:00:00Z" and rows["vm1"]["state"] == "used"
    assert rows["vm2"]["used"] is None and rows["vm2"]["expires"] == "2030-01-01T14:00:00Z"
    assert rows["vm2"]["state"] == "valid"
    assert fresh not in repr(rows) and used not in repr(rows)


def test_store_is_sealed_and_private(store: JoinTokenStore, tmp_path: Path) -> None:
    token = store.create("vm1")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert b"vm1" not in store.path.read_bytes()
    with pytest.raises(CAError, match="wrong key-encryption key"):
        JoinTokenStore(store.path, os.urandom(32)).consume(token, "vm1")


def test_two_stores_see_each_other(store: JoinTokenStore, kek: bytes, clock: Clock) -> None:
    other = JoinTokenStore(store.path, kek, clock=clock)  # e.g. meshctl and the control plane
    token = other.create("vm1")
    store.consume(token, "vm1")
    with pytest.raises(JoinTokenError, match="already used"):
        other.consume(token, "vm1")


def test_concurrent_consumers_only_one_wins(store: JoinTokenStore, kek: bytes, clock: Clock) -> None:
    token = store.create("vm1")
    stores = [store, JoinTokenStore(store.path, kek, clock=clock)]
    results: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            stores[i % 2].consume(token, "vm1")
            results.append("ok")
        except JoinTokenError:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["ok"] + ["refused"] * 7


def test_tokens_never_look_like_command_line_options(tmp_path):
    from meshcore.ca import JoinTokenStore
    from meshcore.ca.tokens import TOKEN_PREFIX

    store = JoinTokenStore(tmp_path / "tokens.sealed", b"k" * 32)
    tokens = [store.create("vm1") for _ in range(200)]
    assert all(t.startswith(TOKEN_PREFIX) and not t.startswith("-") for t in tokens)
    assert len(set(tokens)) == 200
