"""Last known good through Consul faults (issue 12, finding 11, catalog half).

Pure tests of :class:`CatalogHold` with a fake clock, then the Consul source under a running engine with the
Consul double restarted empty: the endpoints stay until the instances re-register or the hold expires."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import pytest

from meshcore.catalog._consul_hold import CatalogHold, HoldMemory
from meshcore.catalog.consul import ConsulCatalogSource, ConsulSettings
from meshcore.catalog.model import Catalog, Node, ServiceInstance
from meshcore.controlplane.engine import MeshEngine
from meshcore.resources.dir_store import DirectoryStore
from meshcore.xds.cache import SnapshotCache


WAIT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _inst(n: int, healthy: bool = True) -> ServiceInstance:
    return ServiceInstance(service=f"s{n % 3}", id=f"s{n % 3}-{n}", node=f"vm{n}", port=8000, mesh_address=f"10.0.0.{n}",
                           mesh_port=21000, healthy=healthy)


def _catalog(ids) -> Catalog:
    return Catalog.of([Node(f"vm{n}", f"10.0.0.{n}") for n in ids], [_inst(n) for n in ids])


def _ids(catalog: Catalog) -> set[int]:
    return {int(i.node[2:]) for i in catalog.instances}


def test_a_reset_that_lost_instances_is_held_until_they_re_register(caplog):
    clock = Clock()
    hold = CatalogHold(hold_s=120, clock=clock)
    assert _ids(hold.publish(_catalog(range(6)), index=50)) == set(range(6))
    with caplog.at_level(logging.WARNING, logger="meshcore.catalog.consul"):
        published = hold.publish(_catalog([]), reset=True, index=3, previous_index=50)  # Consul restarted empty
    assert _ids(published) == set(range(6)) and hold.state is not None
    assert "went backwards from 50 to 3" in caplog.records[-1].getMessage()
    assert "holding 6 instance(s)" in hold.describe()
    clock.now += 10
    # Agents re-register one by one: their fresh data (here: one unhealthy) is used, the rest still held.
    partial = Catalog.of([Node("vm0", "10.0.0.0"), Node("vm1", "10.0.0.1")], [_inst(0), replace(_inst(1), healthy=False)])
    published = hold.publish(partial, index=5)
    assert _ids(published) == set(range(6)) and not next(i for i in published.instances if i.node == "vm1").healthy
    assert "holding 4 instance(s)" in hold.describe()
    # Every instance back: the hold ends, Consul's read is published as it is.
    assert _ids(hold.publish(_catalog(range(6)), index=9)) == set(range(6)) and hold.state is None


def test_a_drastic_shrink_is_held_until_the_hold_expires():
    clock = Clock()
    hold = CatalogHold(hold_s=120, shrink_threshold=0.5, clock=clock)
    hold.publish(_catalog(range(10)), index=10)
    assert _ids(hold.publish(_catalog(range(6)), index=11)) == set(range(6)), "4 of 10 gone: not suspect"
    assert hold.state is None
    assert _ids(hold.publish(_catalog([0, 1]), index=12)) == set(range(6)), "4 of 6 gone at once: held"
    clock.now += 119
    assert _ids(hold.publish(_catalog([0, 1, 7]), index=13)) == {0, 1, 2, 3, 4, 5, 7}, "new ones flow meanwhile"
    clock.now += 2
    assert _ids(hold.publish(_catalog([0, 1, 7]), index=14)) == {0, 1, 7} and hold.state is None, "expired"


def test_small_changes_and_a_reset_with_nothing_lost_are_not_held():
    hold = CatalogHold(hold_s=120, clock=Clock())
    hold.publish(_catalog(range(2)), index=10)
    assert _ids(hold.publish(_catalog([0]), index=11)) == {0}, "one VM leaving a small mesh is not lost data"
    assert _ids(hold.publish(_catalog([0]), reset=True, index=2, previous_index=11)) == {0}
    assert hold.state is None
    off = CatalogHold(hold_s=0, clock=Clock())
    off.publish(_catalog(range(6)), index=10)
    assert _ids(off.publish(_catalog([]), reset=True, index=1, previous_index=10)) == set()
    with pytest.raises(ValueError):
        CatalogHold(shrink_threshold=0)


# ---------------------------------------------------------------------------- with the Consul double
def _register_mesh(consul_http, count: int) -> list[str]:
    names = []
    for k in range(count):
        name = consul_http.unique(f"svc{k}")
        consul_http.put("/v1/agent/service/register", {"Name": name, "ID": f"{name}-1", "Port": 8000 + k,
                                                      "Connect": {"SidecarService": {"Port": 21000 + k}}})
        names.append(name)
    return names


def _restart_empty(double, engine: MeshEngine) -> None:
    """Stop the double and, once the control plane has noticed it is down, start it on the same port with
    no data (a Consul server that lost its state)."""
    port = int(double.address.rsplit(":", 1)[1])
    double.stop()
    _wait(lambda: "cannot reach Consul" in engine.source_error, "the control plane to notice Consul is down")
    # In place: the double's handler threads keep serving kept-alive connections after stop(), which a real
    # Consul process that restarted would not; they see the empty state too. Its index starts over.
    state = double.state
    state.__init__(state.node, state.datacenter, state.node_address)  # type: ignore[misc]
    double.port = port
    double.start()


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _engine(consul_http, tmp_path, hold_s: float) -> tuple[MeshEngine, ConsulCatalogSource]:
    source = ConsulCatalogSource(ConsulSettings.from_env(consul_http.env()), hold_s=hold_s)
    engine = MeshEngine(source, DirectoryStore(tmp_path / "resources"), SnapshotCache(), trust_domain="cluster.local")
    engine.start()
    return engine, source


def _services(engine: MeshEngine, names) -> set[str]:
    snap = engine.snapshot
    return {i.service for i in snap.catalog.instances if i.service in names} if snap is not None else set()


def _watch_while(engine: MeshEngine, names, condition) -> list[set[str]]:
    """Sample the snapshot's services while ``condition()`` holds (in a thread, every 20 ms)."""
    seen: list[set[str]] = []
    done = threading.Event()

    def sample():
        while not done.is_set() and condition():
            seen.append(_services(engine, names))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    return seen, done, t  # type: ignore[return-value]


def test_consul_restarted_empty_the_endpoints_stay_until_re_registration(consul_http, tmp_path):
    double = consul_http.require_double("restarts the double with empty state")
    names = _register_mesh(consul_http, 4)
    for i in range(5):
        consul_http.put(f"/v1/kv/{consul_http.kv_prefix}{i}", {"n": i})  # push the index above a fresh one
    engine, source = _engine(consul_http, tmp_path, hold_s=120)
    try:
        _wait(lambda: _services(engine, names) == set(names), "the mesh in the snapshot")
        _restart_empty(double, engine)
        _wait(lambda: source._hold.state is not None, "the hold to start")
        _wait(lambda: {h.name: h for h in engine.health()}["catalog"].state == "holding", "status to say holding")
        assert "went backwards" in {h.name: h for h in engine.health()}["catalog"].detail
        time.sleep(1.0)  # several polls of the empty Consul
        assert _services(engine, names) == set(names), "the last good endpoints are held"
        _register_mesh(consul_http, 4)  # the agents re-register (anti-entropy)
        _wait(lambda: source._hold.state is None, "the hold to end on re-registration")
        assert _services(engine, names) == set(names)
        _wait(lambda: {h.name: h for h in engine.health()}["catalog"].state == "ok", "catalog health ok")
    finally:
        engine.stop()
        source.close()


def test_consul_restarted_empty_the_hold_expires(consul_http, tmp_path):
    double = consul_http.require_double("restarts the double with empty state")
    names = _register_mesh(consul_http, 3)
    for i in range(5):
        consul_http.put(f"/v1/kv/{consul_http.kv_prefix}{i}", {"n": i})
    engine, source = _engine(consul_http, tmp_path, hold_s=2.0)
    try:
        _wait(lambda: _services(engine, names) == set(names), "the mesh in the snapshot")
        _restart_empty(double, engine)
        _wait(lambda: source._hold.state is not None, "the hold to start")
        seen, done, sampler = _watch_while(engine, names, lambda: source._hold.state is not None)
        _wait(lambda: source._hold.state is None, "the hold to expire (Consul stays quiet)", timeout=10)
        done.set()
        sampler.join(5)
        assert seen and all(s == set(names) for s in seen), "held for as long as the hold lasted"
        _wait(lambda: _services(engine, names) == set(), "Consul's empty catalog after the hold")
    finally:
        engine.stop()
        source.close()


# ---------------------------------------------------------------------------- across a control plane restart
class Wall(Clock):
    def __init__(self) -> None:
        self.now = 1_800_000_000.0


def test_a_hold_restarted_while_consul_is_still_empty_does_not_publish_the_partial_catalog(tmp_path):
    path = tmp_path / "catalog-hold.json"
    mono, wall = Clock(), Wall()
    first = CatalogHold(hold_s=120, clock=mono, memory=HoldMemory(path, "c:8500", clock=wall))
    first.publish(_catalog(range(6)), index=50)
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"

    # Restarted (new process: new monotonic clock) while Consul restarted empty: its first read, at a low
    # index, is judged against the remembered catalog.
    mono, wall.now = Clock(), wall.now + 30
    mono.now = 5.0
    second = CatalogHold(hold_s=120, clock=mono, memory=HoldMemory(path, "c:8500", clock=wall))
    published = second.publish(_catalog([0]), index=3)
    assert _ids(published) == set(range(6)) and second.state is not None
    assert "went backwards from 50 to 3" in second.describe()

    # Restarted again mid-hold: the hold continues to its original deadline, not a fresh hold_s.
    mono.now += 100
    wall.now += 100
    third = CatalogHold(hold_s=120, clock=mono, memory=HoldMemory(path, "c:8500", clock=wall))
    assert third.state is not None and abs(third.remaining() - 20) < 0.01
    assert "since before this control plane restarted" in third.describe()
    assert _ids(third.publish(_catalog([0, 1]), index=4)) == set(range(6))
    mono.now += 21
    assert _ids(third.publish(_catalog([0, 1]), index=5)) == {0, 1} and third.state is None, "expired on time"
    # ... and the next start remembers the catalog it published then, with no hold.
    fourth = CatalogHold(hold_s=120, clock=Clock(), memory=HoldMemory(path, "c:8500", clock=wall))
    assert fourth.state is None and _ids(fourth.good) == {0, 1}


def test_the_memory_is_a_reference_only_when_fresh_for_this_consul_and_readable(tmp_path, caplog):
    path = tmp_path / "catalog-hold.json"
    wall = Wall()
    CatalogHold(clock=Clock(), memory=HoldMemory(path, "c:8500", clock=wall)).publish(_catalog(range(6)), index=50)
    assert CatalogHold(memory=HoldMemory(path, "other:8500", clock=wall)).good is None, "another Consul"
    wall.now += 3601
    assert CatalogHold(memory=HoldMemory(path, "c:8500", clock=wall)).good is None, "older than max_age_s"
    wall.now -= 3601
    fresh = CatalogHold(clock=Clock(), memory=HoldMemory(path, "c:8500", clock=wall))
    assert _ids(fresh.publish(_catalog(range(6)), index=80)) == set(range(6)) and fresh.state is None
    path.write_text('{"version": 1, "good": ')
    with caplog.at_level(logging.WARNING, logger="meshcore.catalog.consul"):
        damaged = CatalogHold(clock=Clock(), memory=HoldMemory(path, "c:8500", clock=wall))
    assert damaged.good is None and "ignoring the catalog hold's memory" in caplog.text
    assert _ids(damaged.publish(_catalog([0]), index=3)) == {0}, "without memory, as before"
    # Unwritable: logged, never raised (the catalog still flows).
    readonly = CatalogHold(clock=Clock(), memory=HoldMemory(tmp_path / "missing-dir" / "f.json", "c:8500"))
    assert _ids(readonly.publish(_catalog(range(2)), index=5)) == {0, 1}


def test_consul_source_restarted_while_consul_is_empty_holds_from_its_memory(consul_http, tmp_path):
    double = consul_http.require_double("restarts the double with empty state")
    names = _register_mesh(consul_http, 3)
    for i in range(5):
        consul_http.put(f"/v1/kv/{consul_http.kv_prefix}{i}", {"n": i})
    memory = tmp_path / "state" / "catalog-hold.json"
    memory.parent.mkdir()
    settings = ConsulSettings.from_env(consul_http.env())
    before = ConsulCatalogSource(settings, hold_s=120, hold_memory=memory)
    try:
        assert set(names) <= set(before.poll(None, 0).catalog.service_names())
    finally:
        before.close()
    # The control plane is down while Consul restarts empty (in place: see _restart_empty).
    port = int(double.address.rsplit(":", 1)[1])
    double.stop()
    state = double.state
    state.__init__(state.node, state.datacenter, state.node_address)  # type: ignore[misc]
    double.port = port
    double.start()
    after = ConsulCatalogSource(settings, hold_s=120, hold_memory=memory)
    try:
        update = after.poll(None, 0)
        assert set(names) <= set(update.catalog.service_names()), "the remembered endpoints are held"
        health = after.health()
        assert health.state == "holding" and "went backwards" in health.detail
        _register_mesh(consul_http, 3)  # the agents re-register
        _wait(lambda: after.poll(update.index, 1).catalog is not None and after._hold.state is None,
              "the hold to end on re-registration")
        assert set(names) <= set(after.poll(None, 0).catalog.service_names())
    finally:
        after.close()
