"""Who holds the trust bundle across replicas: the gate of a prepared root rotation (_bundle_holders.py)."""

from __future__ import annotations

import json

from meshcore.controlplane._bundle_holders import DEPARTED_GRACE_S, HOLDERS_PREFIX, REPORT_GRACE_S, BundleHolders, live_replicas
from meshcore.errors import ConsulError
from meshcore.state import DirBackend

NEW = "sha-new"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _replicas(backend, clock, live):
    return {rid: BundleHolders(backend, lambda rid=rid: rid, lambda: set(live), clock=clock, monotonic=clock)
            for rid in ("cp-a", "cp-b", "cp-c")}


def test_a_node_counts_as_holding_when_any_replica_heard_its_agent(tmp_path):
    backend, clock, live = DirBackend(tmp_path), Clock(), {"cp-a", "cp-b", "cp-c"}
    r = _replicas(backend, clock, live)
    # vm-1's Envoy streams from cp-a, its agent reports to cp-b; vm-2 is all on cp-c and has not reported yet
    r["cp-b"].publish(NEW, connected=[], acks={"vm-1": NEW, "vm-9": "sha-old"})
    r["cp-c"].publish(NEW, connected=["vm-2"], acks={"vm-2": "sha-old"})
    assert r["cp-a"].missing(NEW, connected=["vm-1"], acks={}) == ["vm-2"]  # the leader (cp-a) waits for vm-2
    clock.now += 1
    r["cp-c"].publish(NEW, connected=["vm-2"], acks={"vm-2": NEW})
    assert r["cp-a"].missing(NEW, connected=["vm-1"], acks={}) == []
    stored = json.loads(backend.get(HOLDERS_PREFIX + "cp-c").value)
    assert stored["holding"] == ["vm-2"] and stored["bundle"] == NEW and stored["replica"] == "cp-c"


def test_a_dead_replicas_nodes_count_until_they_could_reconnect_and_a_silent_live_one_holds_for_a_grace(tmp_path):
    backend, clock, live = DirBackend(tmp_path), Clock(), {"cp-a", "cp-b", "cp-c"}
    r = _replicas(backend, clock, live)
    r["cp-b"].publish(NEW, connected=["vm-3", "vm-5"], acks={"vm-5": NEW})
    assert r["cp-a"].missing(NEW, [], {}) == ["vm-3", "replica cp-c"]  # cp-c's nodes are not known yet
    r["cp-c"].publish(NEW, connected=[], acks={})
    live.discard("cp-b")  # cp-b died: vm-3's Envoy has not reconnected anywhere yet, and its agent has not reported
    assert r["cp-a"].missing(NEW, [], {}) == ["vm-3"]  # (the rotation must not move on without it)
    clock.now += DEPARTED_GRACE_S - 1
    r["cp-c"].publish(NEW, connected=["vm-3", "vm-5"], acks={})  # both reconnected to cp-c; vm-5 reported to cp-b
    assert r["cp-a"].missing(NEW, [], {}) == ["vm-3"]
    clock.now += 2
    r["cp-c"].publish(NEW, connected=[], acks={})  # vm-3 is gone for good: after the grace cp-b's part drops out
    assert r["cp-a"].missing(NEW, [], {}) == []
    r["cp-c"].publish(NEW, connected=["vm-5"], acks={})  # what an agent reported to the dead replica stays true
    assert r["cp-a"].missing(NEW, [], {}) == []


def test_a_silent_live_replica_holds_the_rotation_for_a_grace(tmp_path):
    backend, clock, live = DirBackend(tmp_path), Clock(), {"cp-a", "cp-b", "cp-c"}
    r = _replicas(backend, clock, live)
    r["cp-b"].publish(NEW, connected=["vm-3"], acks={"vm-3": NEW})
    assert r["cp-a"].missing(NEW, [], {}) == ["replica cp-c"]  # cp-c's nodes are not known yet
    clock.now += REPORT_GRACE_S + 1  # cp-c (an older release?) never reports: the rotation goes on without it
    assert r["cp-a"].missing(NEW, [], {}) == []
    r["cp-c"].publish("sha-older", ["vm-4"], {})  # a part for another bundle says nothing about this one
    assert r["cp-a"].missing(NEW, [], {}) == []


def test_parts_are_written_on_change_only_and_withdrawn_after_the_rotation(tmp_path):
    backend, clock = DirBackend(tmp_path), Clock()
    writes = []
    real_put = backend.put
    backend.put = lambda key, value, **kw: writes.append(key) or real_put(key, value, **kw)  # type: ignore[method-assign]
    h = BundleHolders(backend, lambda: "cp-a", lambda: None, clock=clock, monotonic=clock)
    h.share(True, NEW, ["vm-1"], {})
    clock.now += 1
    h.share(True, NEW, ["vm-1"], {})
    assert writes == [HOLDERS_PREFIX + "cp-a"]
    h.share(True, NEW, ["vm-1"], {"vm-1": NEW})
    assert len(writes) == 2
    h.share(False, NEW, ["vm-1"], {"vm-1": NEW})
    assert backend.list(HOLDERS_PREFIX) == []


def test_live_replicas_from_the_registry_listing():
    class R:
        def __init__(self, rid, healthy):
            self.id, self.healthy = rid, healthy

    assert live_replicas(lambda: [R("cp-a", True), R("cp-b", False)])() == {"cp-a"}

    def failing():
        raise ConsulError("consul down")

    assert live_replicas(failing)() is None
