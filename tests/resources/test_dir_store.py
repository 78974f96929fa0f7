"""DirectoryStore: layout, all-or-nothing apply, watch, corrupt files, two writers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshcore.errors import StoreError
from meshcore.resources import DirectoryStore, Resource, ResourceKey
from meshcore.resources.dir_store import CORRUPT_GRACE


def pa(name: str, mode: str = "STRICT", namespace: str = "default") -> Resource:
    return Resource(
        api_version="security.mesh.io/v1beta1",
        kind="PeerAuthentication",
        name=name,
        namespace=namespace,
        spec={"mtls": {"mode": mode}},
    )


def files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_apply_writes_one_canonical_file_per_resource(tmp_path):
    store = DirectoryStore(tmp_path)
    a, b = pa("a"), pa("b", "PERMISSIVE", namespace="shop")
    store.apply([a, b])
    f = tmp_path / "PeerAuthentication" / "default" / "a.json"
    assert f.read_text() == a.canonical_json() + "\n"
    assert (tmp_path / "PeerAuthentication" / "shop" / "b.json").exists()
    assert store.list() == [a, b]
    assert store.get(ResourceKey("PeerAuthentication", "shop", "b")) == b
    labelled = Resource("security.mesh.io/v1beta1", "PeerAuthentication", "l", "default", {}, (("a", "1"), ("b", "2")))
    store.apply([labelled])
    assert store.get(labelled.key) == labelled


def test_index_moves_only_on_change(tmp_path):
    store = DirectoryStore(tmp_path)
    _, i0 = store.watch(None, 0)
    store.apply([pa("a")])
    _, i1 = store.watch(None, 0)
    store.apply([pa("a")])  # same content: nothing to do
    _, i2 = store.watch(None, 0)
    store.apply([pa("a", "DISABLE")])
    _, i3 = store.watch(None, 0)
    assert i0 < i1 == i2 < i3
    assert json.loads((tmp_path / ".index").read_text())["index"] == i3


def test_failed_rename_rolls_back_everything(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("existing", "STRICT")])
    before = files_under(tmp_path)
    _, index_before = store.watch(None, 0)
    # A directory where the last file must go makes its rename fail (even for root).
    (tmp_path / "PeerAuthentication" / "default" / "blocked.json").mkdir()
    batch = [pa("existing", "DISABLE"), pa("new-one"), pa("blocked")]
    with pytest.raises(StoreError, match=r"apply failed, nothing was changed: cannot write .*blocked\.json"):
        store.apply(batch)
    (tmp_path / "PeerAuthentication" / "default" / "blocked.json").rmdir()
    assert files_under(tmp_path) == before  # old content restored, new file gone, no temp files left
    assert store.list() == [pa("existing", "STRICT")]
    assert store.watch(None, 0)[1] == index_before


def test_failed_temp_write_changes_nothing(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    before = files_under(tmp_path)
    (tmp_path / "PeerAuthentication" / "blocked").write_text("a file where a namespace directory must go")
    with pytest.raises(StoreError, match="nothing was changed"):
        store.apply([pa("a", "DISABLE"), pa("x", namespace="blocked")])
    (tmp_path / "PeerAuthentication" / "blocked").unlink()
    assert files_under(tmp_path) == before


def test_delete_returns_existing_keys_and_cleans_up(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a"), pa("b", namespace="shop")])
    _, i1 = store.watch(None, 0)
    gone = store.delete([pa("b", namespace="shop").key, ResourceKey("PeerAuthentication", "default", "nope")])
    assert gone == [pa("b", namespace="shop").key]
    assert store.list() == [pa("a")]
    assert not (tmp_path / "PeerAuthentication" / "shop").exists()
    _, i2 = store.watch(None, 0)
    assert i2 == i1 + 1
    assert store.delete([ResourceKey("PeerAuthentication", "default", "nope")]) == []
    assert store.watch(None, 0)[1] == i2


def test_duplicate_keys_in_one_batch_are_refused(tmp_path):
    store = DirectoryStore(tmp_path)
    with pytest.raises(StoreError, match="twice"):
        store.apply([pa("a"), pa("a", "DISABLE")])
    assert store.list() == []


def test_a_corrupt_file_is_left_out_on_its_own_and_named(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    bad = tmp_path / "PeerAuthentication" / "default" / "broken.json"
    bad.write_text("{not json")
    assert store.list() == [pa("a")], "the rest is served"
    ((where, why),) = store.unreadable().items()
    assert where == f"PeerAuthentication/default/broken ({bad})" and "is corrupt" in why
    assert store.health().unreadable == ((where, why),)
    bad.write_text(pa("other").canonical_json())
    assert store.list() == [pa("a")]
    assert "holds PeerAuthentication/default/other, which belongs in" in store.unreadable()[where]
    assert store.delete([ResourceKey("PeerAuthentication", "default", "broken")]) == [
        ResourceKey("PeerAuthentication", "default", "broken")]
    assert store.list() == [pa("a")] and store.unreadable() == {}


def test_watch_returns_at_once_for_none_and_after_wait_without_change(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    resources, index = store.watch(None, 30)
    assert resources == [pa("a")]
    start = time.monotonic()
    resources2, index2 = store.watch(index, 0.3)
    assert (resources2, index2) == (resources, index)
    assert time.monotonic() - start >= 0.25


def test_watch_wakes_on_apply_from_another_thread(tmp_path):
    store = DirectoryStore(tmp_path)
    _, index = store.watch(None, 0)
    timer = threading.Timer(0.3, lambda: DirectoryStore(tmp_path).apply([pa("late", "DISABLE")]))
    timer.start()
    try:
        start = time.monotonic()
        resources, new_index = store.watch(index, 10)
        assert time.monotonic() - start < 2
        assert new_index > index and resources == [pa("late", "DISABLE")]
    finally:
        timer.join()


def test_watch_notices_hand_edits(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    _, index = store.watch(None, 0)
    f = tmp_path / "PeerAuthentication" / "default" / "a.json"
    threading.Timer(0.2, lambda: f.write_text(pa("a", "PERMISSIVE").canonical_json())).start()
    resources, new_index = store.watch(index, 10)
    # (write_text truncates first, so the watcher may count the empty file as one more change)
    assert new_index > index and resources == [pa("a", "PERMISSIVE")]


def test_watch_leaves_out_a_file_that_stays_corrupt_after_a_grace(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a"), pa("b")])
    (tmp_path / "PeerAuthentication" / "default" / "a.json").write_text("{")
    start = time.monotonic()
    resources, _ = store.watch(None, 0)
    assert resources == [pa("b")] and "a.json is corrupt" in "".join(store.unreadable().values())
    assert time.monotonic() - start >= CORRUPT_GRACE, "a half-written hand edit gets a moment first"
    start = time.monotonic()
    assert store.watch(None, 0)[0] == [pa("b")]
    assert time.monotonic() - start < CORRUPT_GRACE, "a file already known to be corrupt is not waited for"


def test_stale_index_returns_at_once(tmp_path):
    store = DirectoryStore(tmp_path)
    start = time.monotonic()
    _, index = store.watch(12345, 10)
    assert index != 12345 and time.monotonic() - start < 2


WRITER = """
import sys
from meshcore.resources import DirectoryStore, Resource
store = DirectoryStore(sys.argv[1])
for i in range(15):
    batch = [Resource("security.mesh.io/v1beta1", "PeerAuthentication", f"{sys.argv[2]}-{i}-{j}", "default", {"n": i})
             for j in range(3)]
    store.apply(batch)
"""


def test_two_processes_do_not_interleave(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], cwd=Path(__file__).parents[2])
        for name in ("p", "q")
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    store = DirectoryStore(tmp_path)
    resources, index = store.watch(None, 0)
    assert len(resources) == 2 * 15 * 3
    assert index == 30  # one bump per batch, none lost
    assert not [p for p in tmp_path.rglob(".*") if p.name not in (".index", ".lock")]


def test_an_idle_watch_sleeps_on_inotify_instead_of_rereading(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    _, index = store.watch(None, 0)
    reads = []
    real = store._content_hash
    monkeypatch.setattr(store, "_content_hash", lambda: reads.append(1) or real())
    store.watch(index, 1.0)
    assert len(reads) <= 3  # the first check and the answer at the deadline (polling would be ~20)


def test_watch_notices_a_file_in_a_directory_made_while_waiting(tmp_path):
    store = DirectoryStore(tmp_path)
    _, index = store.watch(None, 0)

    def hand_write():
        d = tmp_path / "PeerAuthentication" / "edge"
        d.mkdir(parents=True)
        time.sleep(0.1)
        (d / "b.json").write_text(pa("b", namespace="edge").canonical_json())

    timer = threading.Timer(0.2, hand_write)
    timer.start()
    try:
        deadline = time.monotonic() + 10
        resources: list = []
        while resources != [pa("b", namespace="edge")] and time.monotonic() < deadline:
            resources, index = store.watch(index, deadline - time.monotonic())
        assert resources == [pa("b", namespace="edge")]
        assert time.monotonic() < deadline - 5  # woken by inotify, not by the 10 s deadline
    finally:
        timer.join()


def test_watch_without_inotify_polls(tmp_path, monkeypatch):
    from meshcore.resources import dir_store

    monkeypatch.setattr(dir_store, "inotify_simple", None)
    store = DirectoryStore(tmp_path)
    _, index = store.watch(None, 0)
    threading.Timer(0.2, lambda: DirectoryStore(tmp_path).apply([pa("late")])).start()
    start = time.monotonic()
    resources, new_index = store.watch(index, 10)
    assert time.monotonic() - start < 5 and new_index > index and resources == [pa("late")]


CRASHER = """
import os, sys, tempfile
from meshcore.resources import DirectoryStore, Resource
root, fn, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = DirectoryStore(root)
module = os if fn == "replace" else tempfile
real = getattr(module, fn)
calls = [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] > after:
        os._exit(9)  # as abrupt as kill -9: no cleanup, no finally blocks
    return real(*args, **kwargs)
setattr(module, fn, dying)
store.apply([Resource("security.mesh.io/v1beta1", "PeerAuthentication", f"new-{i}", f"ns{i % 7}", {"n": i})
             for i in range(200)] + [Resource("security.mesh.io/v1beta1", "PeerAuthentication", "old-0", "ns0",
                                             {"changed": True})])
store.delete([Resource("security.mesh.io/v1beta1", "PeerAuthentication", "old-1", "ns1", {}).key])
os._exit(0)
"""


@pytest.mark.parametrize("fn,after", [("mkstemp", 0), ("mkstemp", 57), ("replace", 0), ("replace", 1),
                                      ("replace", 2), ("replace", 120), ("replace", 201), ("replace", 202),
                                      ("replace", 203), ("replace", 204), ("replace", 10_000)])
def test_a_writer_killed_at_any_point_leaves_all_or_nothing(tmp_path, fn, after):
    """Finding 1: a writer dying mid-apply left 246 of 1,500 files and 1,254 temporary files."""
    store = DirectoryStore(tmp_path)
    old = [Resource("security.mesh.io/v1beta1", "PeerAuthentication", f"old-{i}", f"ns{i}", {"n": i}) for i in range(3)]
    store.apply(old)
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), fn, str(after)],
                          cwd=Path(__file__).parents[2], timeout=120)
    reopened = DirectoryStore(tmp_path)  # the control plane's start
    names = {(r.namespace, r.name): r.spec for r in reopened.list()}
    new_names = {(f"ns{i % 7}", f"new-{i}") for i in range(200)}
    if not new_names & set(names):
        assert names == {(r.namespace, r.name): r.spec for r in old}, "a mix of old and new"
    else:
        assert new_names <= set(names), f"only {len(new_names & set(names))} of 200 resources applied"
        assert names[("ns0", "old-0")] == {"changed": True}
    if proc.returncode == 0:
        assert ("ns1", "old-1") not in names
    leftovers = [p for p in tmp_path.rglob(".*") if p.name not in (".index", ".lock")]
    assert not leftovers, f"left behind: {leftovers[:5]}"
    assert reopened.watch(None, 0)[0] == reopened.list()


def test_a_committed_change_is_finished_by_the_next_reader(tmp_path):
    """A journal left by a dead writer is rolled forward before anyone reads (not only at start)."""
    store = DirectoryStore(tmp_path)
    store.apply([pa("a")])
    subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), "replace", "3"], cwd=Path(__file__).parents[2],
                   timeout=120)
    assert (tmp_path / ".journal").exists()
    resources, _ = store.watch(None, 0)  # the same (long-lived) store object, as in a running control plane
    assert len([r for r in resources if r.name.startswith("new-")]) == 200
    assert not (tmp_path / ".journal").exists()


def test_health_reports_the_directory_and_its_index(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([pa("a"), pa("b")])
    health = store.health()
    assert (health.backend, health.location, health.state, health.resources) == ("dir", str(tmp_path), "ok", 2)
    assert health.generation == store.watch(None, 0)[1]


FLIPPER = """
import sys
from meshcore.resources import DirectoryStore, Resource
store = DirectoryStore(sys.argv[1])
for round_no in range(1, 6):
    store.apply([Resource("security.mesh.io/v1beta1", "PeerAuthentication", f"p{i}", "default", {"round": round_no})
                 for i in range(300)])
"""


def test_a_watcher_sees_whole_changes_only(tmp_path):
    store = DirectoryStore(tmp_path)
    store.apply([Resource("security.mesh.io/v1beta1", "PeerAuthentication", f"p{i}", "default", {"round": 0})
                 for i in range(300)])
    resources, index = store.watch(None, 0)
    writer = subprocess.Popen([sys.executable, "-c", FLIPPER, str(tmp_path)], cwd=Path(__file__).parents[2])
    seen = []  # (a guard, not a regression: the lock kept live readers whole before too)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resources, index = store.watch(index, 1.0)
        rounds = {r.spec["round"] for r in resources}
        assert len(resources) == 300 and len(rounds) == 1, f"a partial change: rounds {sorted(rounds)}"
        seen.append(rounds.pop())
        if seen[-1] == 5:
            break
    assert writer.wait(timeout=60) == 0
    assert seen[-1] == 5 and seen == sorted(seen)


def test_a_journal_is_finished_also_after_the_store_moved(tmp_path):
    """The journal names files relative to the store (a restored backup may live elsewhere)."""
    store = DirectoryStore(tmp_path / "a")
    store.apply([pa("a")])
    subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path / "a"), "replace", "3"], cwd=Path(__file__).parents[2],
                   timeout=120)
    assert (tmp_path / "a" / ".journal").exists()
    (tmp_path / "a").rename(tmp_path / "b")
    assert len([r for r in DirectoryStore(tmp_path / "b").list() if r.name.startswith("new-")]) == 200


def test_a_hand_edit_that_keeps_size_and_mtime_is_still_read(tmp_path):
    """The store reads a file again only when its stat moved: an in-place edit of the same size with the old
    mtime put back still moves its ctime, and a write within the timestamp's resolution is read again."""
    import os

    store = DirectoryStore(tmp_path)
    store.apply([pa("a", mode="STRICT")])
    time.sleep(0.15)  # past RACY_NS: the next read is memoized on the file's stat
    assert store.list() == [pa("a", mode="STRICT")]
    target = store.path_of(pa("a").key)
    before = target.stat()
    edited = target.read_text().replace("STRICT", "DISABL")  # same length; an invalid mode is still parsed
    with open(target, "r+") as fh:
        fh.write(edited)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    assert [r.spec["mtls"]["mode"] for r in store.list()] == ["DISABL"]


def test_a_change_reads_only_the_files_it_touched(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path)
    store.apply([pa(f"r{i}") for i in range(30)])
    time.sleep(0.15)
    store.watch(None, 0)  # reads each once more (they were written within RACY_NS), then trusts their stat
    opened: list[str] = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    store.apply([pa("r7", mode="PERMISSIVE")])
    resources, _ = store.watch(None, 0)
    assert [r.spec["mtls"]["mode"] for r in resources if r.name == "r7"] == ["PERMISSIVE"]
    read = [f for f in opened if f.endswith(".json")]
    assert read and all(f.endswith("/r7.json") for f in read), read
