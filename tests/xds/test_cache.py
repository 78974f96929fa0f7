"""SnapshotCache and ProxySnapshot: content versions, change detection, status bookkeeping."""

from __future__ import annotations

import threading

import pytest
from google.protobuf import struct_pb2

from envoy.config.cluster.v3 import cluster_pb2

from meshcore.errors import XdsError
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from meshcore.xds.cache import Prepared, ProxySnapshot, SnapshotCache
from tests.xds._snapshots import eds_cluster, endpoints, pack, small_snapshot


def test_same_content_in_another_order_has_the_same_versions():
    a = small_snapshot()
    a[CLUSTER] = [eds_cluster("b"), eds_cluster("a"), eds_cluster("c")]
    b = {t: list(reversed(v)) for t, v in reversed(list(a.items()))}
    sa, sb = ProxySnapshot.of(a), ProxySnapshot.of(b)
    assert sa.version == sb.version
    assert dict(sa.versions) == dict(sb.versions)
    assert [c.name for c in sa.resources[CLUSTER]] == ["a", "b", "c"]
    assert sa.names(CLUSTER) == ("a", "b", "c")


def test_a_change_gives_a_new_version_only_for_its_type():
    base = ProxySnapshot.of(small_snapshot())
    changed = ProxySnapshot.of(small_snapshot(upstream_port=18081))
    assert changed.version != base.version
    assert changed.versions[ENDPOINT] != base.versions[ENDPOINT]
    for type_url in (LISTENER, ROUTE, CLUSTER, SECRET):
        assert changed.versions[type_url] == base.versions[type_url]
    assert len(base.version) == 16 and all(c in "0123456789abcdef" for c in base.version)


def test_every_served_type_has_a_version_even_when_empty():
    snap = ProxySnapshot.of({})
    assert set(snap.versions) == {LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET}
    assert snap.resources[SECRET] == ()


def test_map_order_inside_packed_any_does_not_change_the_version():
    def cluster(keys: list[str]) -> cluster_pb2.Cluster:
        s = struct_pb2.Struct()
        for k in keys:  # insertion order differs; content is equal
            s.fields[k].string_value = k
        c = eds_cluster("c")
        c.typed_extension_protocol_options["x"].CopyFrom(pack(s))
        return c

    keys = [f"k{i}" for i in range(20)]
    one = ProxySnapshot.of({CLUSTER: [cluster(keys)]})
    two = ProxySnapshot.of({CLUSTER: [cluster(list(reversed(keys)))]})
    assert one.version == two.version
    three = ProxySnapshot.of({CLUSTER: [cluster(keys + ["extra"])]})
    assert three.version != one.version


def test_prepared_entries_are_used_as_they_are_and_version_like_messages():
    resources = small_snapshot()
    shared = Prepared.of(resources[CLUSTER][0])
    assert shared.version == Prepared.of(resources[CLUSTER][0]).version
    assert shared.body == resources[CLUSTER][0].SerializeToString(deterministic=True)
    plain = ProxySnapshot.of(resources)
    mixed = ProxySnapshot.of({**resources, CLUSTER: [shared]})
    other = ProxySnapshot.of({**resources, CLUSTER: [shared]})
    assert mixed.version == plain.version and dict(mixed.versions) == dict(plain.versions)
    assert mixed.entries(CLUSTER)["outbound:backend"] is shared is other.entries(CLUSTER)["outbound:backend"]
    assert mixed.packed(CLUSTER)[0] == shared.any
    # An entry keeps its bytes only: each message it gives is a new copy, equal to what was prepared.
    assert shared.message == resources[CLUSTER][0] and shared.message is not shared.message
    assert not hasattr(shared, "__dict__")  # slots only: nothing else (a parsed copy) can be kept on it
    assert set(type(shared).__slots__) <= {"name", "body", "version", "type_url", "cls", "_derived"}
    assert mixed.resource_versions(CLUSTER) == {"outbound:backend": shared.version}
    assert mixed.resource_versions(ENDPOINT) == plain.resource_versions(ENDPOINT)
    changed = ProxySnapshot.of(small_snapshot(upstream_port=18081))
    assert changed.resource_versions(ENDPOINT) != plain.resource_versions(ENDPOINT)
    assert changed.resource_versions(CLUSTER) == plain.resource_versions(CLUSTER)
    with pytest.raises(XdsError, match="expected Cluster"):
        ProxySnapshot.of({CLUSTER: [Prepared.of(endpoints("x", 1))]})


def test_of_rejects_unknown_types_and_wrong_classes():
    with pytest.raises(XdsError, match="unsupported type URL"):
        ProxySnapshot.of({"type.googleapis.com/foo.Bar": []})
    with pytest.raises(XdsError, match="expected Cluster"):
        ProxySnapshot.of({CLUSTER: [endpoints("x", 1)]})


def test_set_returns_false_and_wakes_nobody_when_unchanged():
    cache = SnapshotCache()
    woken: list[int] = []
    cancel = cache.watch("vm1", lambda: woken.append(1))
    assert cache.set("vm1", ProxySnapshot.of(small_snapshot())) is True
    assert woken == [1]
    assert cache.generation("vm1") == 1
    assert cache.set("vm1", ProxySnapshot.of(small_snapshot())) is False
    assert woken == [1] and cache.generation("vm1") == 1
    assert cache.set("vm1", ProxySnapshot.of(small_snapshot(body="v2"))) is True
    assert woken == [1, 1] and cache.generation("vm1") == 2
    cancel()
    cache.set("vm1", ProxySnapshot.of(small_snapshot(body="v3")))
    assert woken == [1, 1]


def test_get_remove_nodes():
    cache = SnapshotCache()
    snap = ProxySnapshot.of(small_snapshot())
    cache.set("vm2", snap)
    cache.set("vm1", snap)
    assert cache.nodes() == ["vm1", "vm2"]
    assert cache.get("vm1") is snap
    assert cache.remove("vm1") is True
    assert cache.remove("vm1") is False
    assert cache.get("vm1") is None and cache.nodes() == ["vm2"]


def test_wait_for_change_wakes_on_set():
    cache = SnapshotCache()
    start = cache.generation("vm1")
    timer = threading.Timer(0.05, lambda: cache.set("vm1", ProxySnapshot.of(small_snapshot())))
    timer.start()
    assert cache.wait_for_change("vm1", start, timeout=5) == start + 1
    timer.join()
    assert cache.wait_for_change("vm1", start + 1, timeout=0.05) == start + 1


def test_status_and_synced_follow_acks_and_nacks():
    cache = SnapshotCache()
    snap = ProxySnapshot.of(small_snapshot())
    cache.set("vm1", snap)
    assert cache.synced("vm1") is False  # no stream
    cache.stream_opened("vm1", "s1")
    assert cache.synced("vm1") is False  # nothing subscribed yet
    cache.record_subscription("vm1", "s1", CLUSTER, True)
    cache.record_subscription("vm1", "s1", SECRET, False)  # non-wildcard type, no names: ignored
    cache.record_sent("vm1", CLUSTER, snap.versions[CLUSTER])
    assert cache.synced("vm1") is False
    cache.record_ack("vm1", "s1", CLUSTER, snap.versions[CLUSTER])
    assert cache.synced("vm1") is True and cache.wait_synced("vm1", 0.01) is True

    newer = ProxySnapshot.of({**small_snapshot(), CLUSTER: [eds_cluster("outbound:backend"), eds_cluster("z")]})
    cache.set("vm1", newer)
    cache.record_sent("vm1", CLUSTER, newer.versions[CLUSTER])
    cache.record_nack("vm1", CLUSTER, newer.versions[CLUSTER], "bad cluster z")
    status = cache.status("vm1")
    assert status["synced"] is False
    assert status["connected_streams"] == 1
    assert status["subscribed"] == [CLUSTER]
    assert status["pushes"] == {CLUSTER: 2}
    assert status["nacks"] == {CLUSTER: 1}
    assert status["acked"] == {CLUSTER: snap.versions[CLUSTER]}
    assert status["last_nack"]["message"] == "bad cluster z"
    assert status["last_nack"]["version"] == newer.versions[CLUSTER]
    assert status["version"] == newer.version

    cache.stream_closed("vm1", "s1")
    assert cache.status("vm1")["connected_streams"] == 0
    assert cache.connected_nodes() == []
    assert cache.synced("vm1") is False


def test_replaced_equals_a_snapshot_made_whole_with_the_same_entries():
    resources = small_snapshot()
    base = ProxySnapshot.of(resources)
    moved = small_snapshot(upstream_port=18081)  # new endpoints, same names
    new_eds = [Prepared.of(m) for m in moved[ENDPOINT]]
    replaced = base.replaced(new_eds)
    whole = ProxySnapshot.of({**resources, ENDPOINT: new_eds})
    assert replaced.version == whole.version and dict(replaced.versions) == dict(whole.versions)
    assert {t: dict(replaced.entries(t)) for t in PUSH_ORDER} == {t: dict(whole.entries(t)) for t in PUSH_ORDER}
    assert replaced.entries(CLUSTER) is base.entries(CLUSTER)  # untouched types are the same mappings
    assert base.replaced(base.entries(ENDPOINT).values()) is base  # nothing different: the snapshot itself
    with pytest.raises(KeyError):
        base.replaced([Prepared.of(moved[ENDPOINT][0].__class__(cluster_name="not-there"))])
