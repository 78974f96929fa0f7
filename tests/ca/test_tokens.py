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


def test_create_and_consume_append_to_the_journal_not_rewrite_the_store(store: JoinTokenStore) -> None:
    first = store.create("vm1")
    base = store.path.stat()
    tokens = [store.create(f"vm{i}") for i in range(2, 6)]
    store.consume(first, "vm1")
    assert (store.path.stat().st_ino, store.path.stat().st_mtime_ns) == (base.st_ino, base.st_mtime_ns)
    assert len(store.journal_path.read_bytes().splitlines()) == 6  # five creates, one use
    assert b"vm1" not in store.journal_path.read_bytes()  # every line sealed
    assert stat.S_IMODE(store.journal_path.stat().st_mode) == 0o600
    fresh = JoinTokenStore(store.path, store._kek)
    with pytest.raises(JoinTokenError, match="already used"):
        fresh.consume(first, "vm1")
    fresh.consume(tokens[0], "vm2")


def test_the_journal_is_folded_into_the_store(store: JoinTokenStore, kek: bytes, clock: Clock, monkeypatch) -> None:
    from meshcore.ca import tokens as tokens_module

    monkeypatch.setattr(tokens_module, "COMPACT_MIN_LINES", 4)
    other = JoinTokenStore(store.path, kek, clock=clock)
    made = [store.create(f"vm{i}") for i in range(3)]
    other.consume(made[0], "vm0")
    store.consume(made[1], "vm1")  # sixth line > 4 lines and > 3 entries: folded
    assert store.journal_path.stat().st_size == 0
    assert {r["node"]: r["state"] for r in other.list()} == {"vm0": "used", "vm1": "used", "vm2": "valid"}
    other.consume(made[2], "vm2")
    with pytest.raises(JoinTokenError, match="already used"):
        store.consume(made[2], "vm2")


def test_a_torn_last_journal_line_is_cut_and_a_damaged_one_refused(store: JoinTokenStore, kek: bytes,
                                                                    caplog) -> None:
    token = store.create("vm1")
    with open(store.journal_path, "ab") as fh:
        fh.write(b"TUVTSENPUkUtU0VBTEVE")  # a writer died mid-line
    with caplog.at_level("WARNING", logger="meshcore.ca.tokens"):
        JoinTokenStore(store.path, kek).consume(token, "vm1")
    assert "torn line" in caplog.text
    assert store.journal_path.read_bytes().endswith(b"\n")
    with open(store.journal_path, "ab") as fh:
        fh.write(b"bm90IHNlYWxlZA==\n")  # a whole line that is not a sealed event
    with pytest.raises(CAError, match="line 3"):
        JoinTokenStore(store.path, kek).list()


def test_many_concurrent_joins_share_syncs_and_each_token_is_used_once(store: JoinTokenStore, kek: bytes) -> None:
    tokens = [(f"vm{i}", store.create(f"vm{i}")) for i in range(40)]
    stores = [store, JoinTokenStore(store.path, kek)]
    results: list[str] = []

    def attempt(i: int) -> None:
        node, token = tokens[i % 40]
        try:
            stores[i % 2].consume(token, node)
            results.append("ok")
        except JoinTokenError:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(80)]  # every token twice
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 40 and results.count("refused") == 40
