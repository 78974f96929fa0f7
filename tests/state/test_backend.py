import threading

import pytest

from meshcore.errors import StoreError
from meshcore.state import DirBackend, PrefixWatcher, Put, update


def test_get_put_and_cas(backend):
    assert backend.get("a/b") is None
    assert backend.put("a/b", b"one", cas=0)
    first = backend.get("a/b")
    assert first.value == b"one" and first.index > 0
    assert not backend.put("a/b", b"two", cas=0)  # exists already
    assert backend.put("a/b", b"two", cas=first.index)
    assert not backend.put("a/b", b"three", cas=first.index)  # stale index
    assert backend.get("a/b").value == b"two"
    assert backend.put("a/b", b"four")  # unconditional
    assert backend.get("a/b").value == b"four"


def test_delete_with_and_without_cas(backend):
    backend.put("x/y", b"1")
    entry = backend.get("x/y")
    assert not backend.delete("x/y", cas=entry.index + 12345)
    assert backend.get("x/y") is not None
    assert backend.delete("x/y", cas=entry.index)
    assert backend.get("x/y") is None
    assert backend.delete("x/y")  # absent is fine


def test_list_by_prefix(backend):
    for key in ("t/a", "t/b/c", "u/a", "tt"):
        backend.put(key, key.encode())
    assert [e.key for e in backend.list("t/")] == ["t/a", "t/b/c"]
    assert [e.value for e in backend.list("u/")] == [b"u/a"]
    assert backend.list("none/") == []


def test_put_all_is_all_or_nothing(backend):
    backend.put("k/1", b"old")
    stale = backend.get("k/1").index + 999
    assert not backend.put_all([Put("k/2", b"new"), Put("k/1", b"x", cas=stale)])
    assert backend.get("k/2") is None and backend.get("k/1").value == b"old"
    assert backend.put_all([Put("k/2", b"new", cas=0), Put("k/1", b"x", cas=backend.get("k/1").index)])
    assert backend.get("k/2").value == b"new" and backend.get("k/1").value == b"x"


def test_watch_returns_on_a_change(backend):
    backend.put("w/a", b"1")
    entries, index = backend.watch("w/", 0, 0)
    assert [e.value for e in entries] == [b"1"]
    threading.Timer(0.3, lambda: backend.put("w/b", b"2")).start()
    entries, after = backend.watch("w/", index, 10)
    assert after != index and [e.key for e in entries] == ["w/a", "w/b"]


def test_prefix_watcher_and_update(backend):
    seen: list[list[bytes]] = []
    changed = threading.Event()

    def on_change(entries):
        seen.append([e.value for e in entries])
        changed.set()

    watcher = PrefixWatcher(backend, "c/", on_change, name="test", wait=5).start()
    try:
        assert seen == [[]]
        changed.clear()
        update(backend, "c/n", lambda e: str(int(e.value) + 1 if e else 1).encode(), doing="counting")
        update(backend, "c/n", lambda e: str(int(e.value) + 1 if e else 1).encode(), doing="counting")
        assert backend.get("c/n").value == b"2"
        assert changed.wait(10)
        for _ in range(100):
            if seen[-1] == [b"2"]:
                break
            changed.clear()
            changed.wait(0.2)
        assert seen[-1] == [b"2"]
    finally:
        watcher.stop()


def test_concurrent_updates_lose_nothing(backend):
    def bump():
        for _ in range(5):
            update(backend, "n", lambda e: str(int(e.value) + 1 if e else 1).encode(), doing="counting")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.get("n").value == b"20"


@pytest.mark.parametrize("key", ["/abs", "a//b", "../x", "a/./b", ".hidden", "a/.lock", ""])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(StoreError, match="state key"):
        DirBackend(tmp_path).get(key)


def test_dir_backend_keeps_plain_files(tmp_path):
    b = DirBackend(tmp_path)
    b.put("operator-tokens.sealed", b"sealed bytes")
    b.put("federation/bundles.json", b"{}")
    assert (tmp_path / "operator-tokens.sealed").read_bytes() == b"sealed bytes"
    assert (tmp_path / "federation" / "bundles.json").stat().st_mode & 0o777 == 0o600
    assert [e.key for e in b.list("")] == ["federation/bundles.json", "operator-tokens.sealed"]
