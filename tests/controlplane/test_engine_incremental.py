"""The engine's incremental path: snapshot updates, the dependency index, equality with a full rebuild."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from meshcore.catalog.model import Catalog, CatalogUpdate, Upstream
from meshcore.controlplane.engine import MeshEngine
from meshcore.controlplane.metrics import ControlPlaneMetrics
from meshcore.errors import CatalogError, MeshError, StoreError, XdsError
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy
from meshcore.xds.cache import PUSH_ORDER, SnapshotCache
from meshcore.xds.generate.endpoints import load_assignment
from meshcore.xds.validate import publish

from ._mesh import RandomChanges, generated_catalog, instance


class _QuietSources:
    """A catalog source and resource store with nothing new to say: the tests hand changes to the
    engine themselves (``catalog_changed``/``resources_changed``); the watchers just block."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def poll(self, index, wait):
        self.closed.wait(wait)
        raise CatalogError("closed") if self.closed.is_set() else CatalogError("nothing new")

    def watch(self, index, wait):
        self.closed.wait(wait)
        raise StoreError("closed") if self.closed.is_set() else StoreError("nothing new")

    def close(self) -> None:
        self.closed.set()


def _per_node_secrets(node: str) -> str:
    return f"/var/lib/meshcore/{node}/secrets"


def _agent_default_secrets(node: str) -> str:
    return "/var/lib/meshcore-agent/secrets"  # every agent's default: upstream clusters are shared by replicas


def _engine(catalog: Catalog, resources=(), incremental: bool = True, secrets=_per_node_secrets) -> MeshEngine:
    quiet = _QuietSources()
    engine = MeshEngine(quiet, quiet, SnapshotCache(), trust_domain="cluster.local",  # type: ignore[arg-type]
                        metrics=ControlPlaneMetrics(), incremental=incremental)
    engine.quiet_sources = quiet  # type: ignore[attr-defined]
    for n in catalog.nodes:
        engine.proxy_connected(ProxyInfo(node=n.name, secrets_dir=secrets(n.name)))
    engine.catalog_changed(CatalogUpdate(catalog, 1))
    engine.resources_changed(list(resources))
    assert engine.flush()
    return engine


def _wire(cache: SnapshotCache, node: str) -> list:
    snap = cache.get(node)
    return [] if snap is None else [(t, [(p.type_url, p.value) for p in snap.packed(t)]) for t in PUSH_ORDER]


def _full(snapshot: MeshSnapshot, node: str, secrets=_per_node_secrets) -> tuple[list, str]:
    """What a full rebuild publishes for ``node``: its wire resources, or the build error."""
    cache = SnapshotCache()
    try:
        publish(cache, node, build_proxy(snapshot, ProxyInfo(node=node, secrets_dir=secrets(node))))
    except (XdsError, MeshError) as exc:
        return [], str(exc)
    return _wire(cache, node), ""


def _builds(engine: MeshEngine) -> dict[str, int]:
    return {n: s.built_seq for n, s in engine.proxies.items()}


def _rebuilt(before: dict[str, int], engine: MeshEngine) -> set[str]:
    return {n for n, seq in _builds(engine).items() if seq != before.get(n)}


# --- snapshot ---------------------------------------------------------------------------------


def test_incremental_snapshot_equals_a_full_build_and_shares_what_did_not_change():
    changes = RandomChanges(seed=3)
    snap = MeshSnapshot.build(changes.catalog, changes.resource_list(), settings=changes.settings)
    for _ in range(60):
        changes.step()
        nxt, change = snap.update(catalog=changes.catalog, resources=changes.resource_list(), settings=changes.settings)
        full = MeshSnapshot.build(changes.catalog, changes.resource_list(), settings=changes.settings)
        assert nxt == full and nxt.hash == full.hash
        assert bool(change) == (full.hash != snap.hash)
        kept = {r.key for r in snap.resources} & {r.key for r in nxt.resources}
        for key in kept:
            if key not in {c[1].key for c in change.resources if c[1] is not None}:
                assert nxt._by_key[key] is snap._by_key[key]  # unchanged resources are shared
        snap = nxt


def test_catalog_node_lookup_and_change_detection():
    catalog = generated_catalog()
    assert catalog.node("vm3").name == "vm3" and catalog.node("nope") is None
    inst = catalog.instances_of("s4")[0]
    moved = Catalog.of(catalog.nodes, [replace(i, healthy=False) if i == inst else i for i in catalog.instances])
    change = moved.changes_since(catalog)
    assert change.services == {"s4"} and not change.nodes and not change.names_changed
    assert moved.changes_since(catalog, hint=frozenset({"s4", "s5"})).services == {"s4"}
    assert moved.service_hashes["s5"] == catalog.service_hashes["s5"]
    assert moved.service_hashes["s4"] != catalog.service_hashes["s4"]


def test_catalog_indexes_derived_from_a_hint_equal_the_ones_built_from_scratch():
    changes = RandomChanges(seed=5)
    for _ in range(80):
        old = changes.catalog
        changes.step()
        hinted = Catalog.of(changes.catalog.nodes, changes.catalog.instances)
        hinted.changes_since(old, hint=changes.last_changed)
        fresh = changes.catalog
        assert hinted._by_service == fresh._by_service
        assert hinted._by_node == fresh._by_node
        assert all(hinted.on_node(n.name) == fresh.on_node(n.name) for n in fresh.nodes)
        assert hinted.service_names() == fresh.service_names()


# --- the dependency index ---------------------------------------------------------------------


def test_a_leaf_instance_change_reaches_exactly_the_proxies_that_read_it():
    catalog = generated_catalog()
    engine = _engine(catalog)
    leaf = "s9"
    target = engine.snapshot.catalog.instances_of(leaf)[0]
    # A health flip: rebuilt are the proxies whose own reads include the leaf's healthy instances or the
    # target's node; the ones that only use the leaf's shared ClusterLoadAssignment are re-assembled.
    built = {n for n in engine.proxies if ("healthy", leaf) in engine.deps_of(n).keys
             or ("on_node", target.node) in engine.deps_of(n).keys}
    users = {n for n, s in engine.proxies.items() if any(k.make is load_assignment and k.args[0] == leaf for k in s.shared)}
    readers = {n for n in engine.proxies if leaf in {u.destination_name for i in catalog.on_node(n) for u in i.upstreams}}
    expected = built | users
    assert readers <= expected and target.node in built and users and len(expected) < len(engine.proxies)
    before = _builds(engine)
    m = engine.metrics
    builds, joins = m.proxy_builds._value.get(), m.proxy_reassemblies._value.get()
    engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, [
        replace(i, healthy=False) if i == target else i for i in catalog.instances]), 2))
    engine.flush()
    assert _rebuilt(before, engine) == expected
    assert m.proxy_builds._value.get() - builds == len(built)
    assert m.proxy_reassemblies._value.get() - joins == len(expected - built)
    assert m.proxy_pushes._value.get() >= 1
    for n in expected:
        assert _wire(engine.cache, n) == _full(engine.snapshot, n)[0]


def test_an_instance_added_with_the_same_protocol_and_identity_only_re_assembles_the_callers():
    # s0 is called by most services. A new s0 instance on vm9 changes s0's endpoints, not its protocols or
    # identities: only vm9 (which now runs it) is rebuilt; the callers get the new shared assignment.
    catalog = generated_catalog()
    engine = _engine(catalog, secrets=_agent_default_secrets)
    callers = {n.name for n in catalog.nodes if any(u.destination_name == "s0" for i in catalog.on_node(n.name)
                                                    for u in i.upstreams)} - {"vm9"}
    assert len(callers) >= 3
    m = engine.metrics
    for extra_meta, rebuilt_callers in (((), False), ((("service-account", "s0-canary"),), False),
                                        ((("protocol", "tcp"),), True)):
        added = replace(instance("s0", 9, 70, ()), id=f"s0-extra-{len(extra_meta)}-{rebuilt_callers}",
                        meta=(("version", "v1"),) + extra_meta)
        before, builds = _builds(engine), m.proxy_builds._value.get()
        current = engine.snapshot.catalog
        engine.catalog_changed(CatalogUpdate(Catalog.of(current.nodes, list(catalog.instances) + [added]), 10))
        engine.flush()
        rebuilt = m.proxy_builds._value.get() - builds
        assert callers <= _rebuilt(before, engine)  # every caller has the new endpoint ...
        if rebuilt_callers:  # ... a protocol change reaches their listeners: rebuilt
            assert rebuilt >= len(callers)
        else:  # ... otherwise (a new identity only changes the shared upstream cluster): re-assembled
            assert rebuilt <= 1
        for n in callers | {"vm9"}:
            assert _wire(engine.cache, n) == _full(engine.snapshot, n, _agent_default_secrets)[0]
        engine.catalog_changed(CatalogUpdate(catalog, 11))  # back to the start
        engine.flush()


def test_a_new_dependency_after_a_virtual_service_change_is_picked_up():
    # s1 calls s2; a VirtualService sends s2's traffic to s15, which s1's node never read before.
    catalog = generated_catalog()
    client = next(n.name for n in catalog.nodes
                  if any("s2" in {u.destination_name for u in i.upstreams} for i in catalog.on_node(n.name)))
    deps = _engine(catalog).deps_of(client)
    dest = next(s for s in catalog.service_names()  # an app service (a gateway is reached on its Gateway ports)
                if ("svc", s) not in deps.keys and s not in deps.local and s != "s2"
                and not catalog.instances_of(s)[0].kind)
    engine = _engine(catalog)
    assert ("svc", dest) not in engine.deps_of(client).keys
    vs = load_documents(f"""
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: s2-moved}}
spec:
  hosts: [s2]
  http:
  - route:
    - destination: {{host: {dest}}}
""", "vs.yaml")
    engine.resources_changed(vs)
    engine.flush()
    assert engine.proxies[client].error == ""
    assert ("svc", dest) in engine.deps_of(client).keys
    # Now a change of that destination reaches the client.
    before = _builds(engine)
    target = engine.snapshot.catalog.instances_of(dest)[0]
    engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, [
        replace(i, healthy=False) if i == target else i for i in catalog.instances]), 3))
    engine.flush()
    assert client in _rebuilt(before, engine)


def test_a_selector_policy_change_reaches_only_the_selected_workloads_proxies():
    catalog = generated_catalog()
    engine = _engine(catalog)
    ap = load_documents("""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: s6-get}
spec:
  selector: {matchLabels: {app: s6}}
  rules:
  - to:
    - operation: {methods: [GET]}
""", "ap.yaml")
    before = _builds(engine)
    engine.resources_changed(ap)
    engine.flush()
    assert _rebuilt(before, engine) == {i.node for i in catalog.instances_of("s6")}


def test_a_settings_change_reaches_every_proxy():
    catalog = generated_catalog()
    engine = _engine(catalog)
    before = _builds(engine)
    engine.set_settings(replace(engine.settings, federated_bundles=(("other.example", "PEM"),)))
    engine.flush()
    assert _rebuilt(before, engine) == set(engine.proxies)


# --- equality -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,secrets", [(11, _per_node_secrets), (12, _agent_default_secrets)],
                         ids=["per-node-secrets", "shared-secrets"])
def test_incremental_path_yields_byte_identical_config_to_a_full_rebuild(seed, secrets):
    """Also covers shared entries: replicas of a service calling the same hosts (with one secrets
    directory, as agents default to, their upstream clusters are one shared entry), nodes moving between
    zones and datacenters (localities), DestinationRules with subsets and outlier detection (a plugin
    editing clusters and assignments per proxy: locality priorities), health flips (re-assembly only)."""
    changes = RandomChanges(seed=seed)
    engine = _engine(changes.catalog, secrets=secrets)
    full_engine = _engine(changes.catalog, incremental=False, secrets=secrets)
    rebuilt = 0
    m = engine.metrics
    endpoint_only = 0
    for step in range(200):
        kind = changes.step()
        # What the generators made for each proxy (a failed build is redone on any change it reaches).
        generated = {n: st.generated for n, st in engine.proxies.items() if not st.error}
        for e, hint in ((engine, changes.last_changed), (full_engine, None)):
            # The incremental engine gets the source's hint (the services this step changed).
            e.catalog_changed(CatalogUpdate(changes.catalog, step + 2, changed_services=hint))
            e.resources_changed(changes.resource_list())
            e.set_settings(changes.settings)
        before = _builds(engine)
        engine.flush()
        full_engine.flush()
        rebuilt += len(_rebuilt(before, engine))
        if kind == "health":
            # An endpoint-only change: only the host's generators run again (its own instance changed); the
            # callers get the new shared assignment by re-assembly (a plugin that edits assignments per
            # proxy, locality priorities, re-runs alone), byte-identical to a full rebuild (below).
            assert len([n for n, g in generated.items() if engine.proxies[n].generated is not g]) <= 1, step
            endpoint_only += 1
        if step % 25 == 24 or step == 199:
            snap = MeshSnapshot.build(changes.catalog, changes.resource_list(), "cluster.local", changes.settings)
            assert engine.snapshot.hash == snap.hash == full_engine.snapshot.hash
        for node, state in engine.proxies.items():
            # Every proxy's config is current as of the new snapshot, rebuilt or not (canaries wait on it).
            assert state.error or state.built_hash == engine.snapshot.hash, (step, node)
            # The incremental engine's published config and error equal the full-rebuild engine's.
            assert _wire(engine.cache, node) == _wire(full_engine.cache, node), (step, node)
            assert engine.proxies[node].error == full_engine.proxies[node].error, (step, node)
    snap = MeshSnapshot.build(changes.catalog, changes.resource_list(), "cluster.local", changes.settings)
    for node in engine.proxies:
        wire, error = _full(snap, node, secrets)
        assert engine.proxies[node].error == error
        if not error:
            assert _wire(engine.cache, node) == wire, node
    assert rebuilt < 200 * len(engine.proxies)  # it did not degrade into rebuilding everyone
    assert endpoint_only > 5
    assert m.proxy_reassemblies._value.get() > 0  # health flips were served by re-assembly
    # Shared entries: one Prepared object in the snapshots of several proxies.
    holders: dict = {}
    for node in engine.proxies:
        snap_ = engine.cache.get(node)
        for t in PUSH_ORDER:
            for e in (snap_.entries(t).values() if snap_ is not None else ()):
                holders.setdefault((t, id(e)), set()).add(node)
    shared = {t for (t, _), nodes in holders.items() if len(nodes) > 1}
    assert any("ClusterLoadAssignment" in t for t in shared)
    if secrets is _agent_default_secrets:
        assert any(t.endswith("Cluster") for t in shared)


# --- building never blocks serving ------------------------------------------------------------


def test_build_for_and_a_new_connection_do_not_wait_for_a_rebuild():
    catalog = generated_catalog()
    engine = _engine(catalog)
    entered, release = threading.Event(), threading.Event()
    real = engine._publish_traced

    def slow(node, snap, seq):
        entered.set()
        release.wait(10)
        return real(node, snap, seq)

    engine._publish_traced = slow  # type: ignore[method-assign]
    engine.set_settings(replace(engine.settings, federated_bundles=(("other.example", "PEM"),)))
    builder = threading.Thread(target=engine.flush)
    builder.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        assert engine.build_for("vm1") is not None
        assert engine.catalog() is not None
        engine._publish_traced = real  # type: ignore[method-assign]
        engine.proxy_connected(ProxyInfo(node="vm-new", secrets_dir="/var/lib/meshcore/vm-new/secrets"))
        assert engine.cache.get("vm-new") is not None
        assert time.monotonic() - started < 5  # it did not wait for the 10 s the rebuild is held
    finally:
        release.set()
        builder.join(20)


def test_a_burst_of_changes_is_coalesced_into_one_rebuild():
    catalog = generated_catalog()
    engine = _engine(catalog)
    engine.quiet_s, engine.max_delay_s = 0.05, 0.5
    engine.start()
    try:
        snapshots = engine.metrics.coalesced_changes._sum.get()
        insts = list(catalog.instances)
        for k in range(20):
            insts.append(instance("s3", k % 10, 60 + k, ("s0",)))
            engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, insts), 10 + k))
        deadline = time.monotonic() + 20
        while engine.snapshot.catalog.instances_of("s3") != Catalog.of(catalog.nodes, insts).instances_of("s3"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while engine.metrics.coalesced_changes._sum.get() - snapshots < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        observed = engine.metrics.coalesced_changes.collect()[0].samples
        count = next(s.value for s in observed if s.name.endswith("_count"))
        assert count <= 1 + 3  # the first snapshot, then the burst in a few rebuilds at most
    finally:
        engine.quiet_sources.close()  # type: ignore[attr-defined]
        engine.stop()


def test_upstreams_of_new_instance_are_found():
    catalog = generated_catalog()
    engine = _engine(catalog)
    insts = list(catalog.instances) + [replace(instance("s5", 2, 90, ("s7",)), upstreams=(
        Upstream(destination_name="s7", local_bind_port=29000),))]
    engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, insts), 5))
    engine.flush()
    deps = engine.deps_of("vm2")
    assert "s7" in deps.services
    assert ("protocols", "s7") in deps.keys  # its new outbound listener reads the upstream's protocol


def test_a_change_during_a_long_rebuild_is_taken_between_two_proxies_and_built_first():
    catalog = generated_catalog()
    engine = _engine(catalog)
    engine.quiet_s = engine.max_delay_s = 0.0
    order: list[tuple[str, int]] = []
    first_built, go_on = threading.Event(), threading.Event()
    real = engine._publish_traced

    def traced(node, snap, seq):
        order.append((node, seq))
        first_built.set()
        go_on.wait(10)
        return real(node, snap, seq)

    engine._publish_traced = traced  # type: ignore[method-assign]
    engine.set_settings(replace(engine.settings, federated_bundles=(("other.example", "PEM"),)))  # every proxy
    pass_seq = engine._seq + 1
    builder = threading.Thread(target=engine.flush)
    builder.start()
    try:
        assert first_built.wait(10)
        # A leaf instance change while the mesh-wide pass is on its first proxy.
        target = catalog.instances_of("s9")[0]
        engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, [
            replace(i, healthy=False) if i == target else i for i in catalog.instances]), 7))
        go_on.set()
    finally:
        go_on.set()
        builder.join(30)
    leaf_nodes = {n for n, seq in order if seq == pass_seq + 1}
    assert leaf_nodes  # the leaf change's proxies were built in the same pass, from the newer snapshot
    later = [n for n, _ in order[1:]]
    assert set(later[:len(leaf_nodes)]) == leaf_nodes  # right after the proxy that was being built
    assert {n for n, _ in order} == set(engine.proxies)  # and the pass still reached every proxy
    assert all(s.built_seq == pass_seq + 1 for n, s in engine.proxies.items() if n != order[0][0])


def test_builds_and_pushes_are_exported_under_their_documented_names():
    from prometheus_client import generate_latest

    engine = _engine(generated_catalog())
    text = generate_latest(engine.metrics.registry).decode()
    builds = next(line for line in text.splitlines() if line.startswith("meshcore_proxy_builds_total "))
    pushes = next(line for line in text.splitlines() if line.startswith("meshcore_proxy_pushes_total "))
    assert float(builds.split()[1]) == len(engine.proxies) == float(pushes.split()[1])


def test_the_full_rebuild_flag_reaches_the_engine(tmp_path, monkeypatch):
    from meshcore.controlplane.daemon import parse_args

    assert parse_args(["--full-rebuild"]).full_rebuild is True
    assert parse_args([]).full_rebuild is False
    monkeypatch.setenv("MESHCORE_FULL_REBUILD", "1")
    assert parse_args([]).full_rebuild is True
    full = _engine(generated_catalog(), incremental=False)
    assert full.describe()["incremental"] is False and full.quiet_s == 0.0
    assert full.deps_of("vm1") is None  # no dependency index in the baseline: every change rebuilds every proxy


def test_a_failed_rebuild_loses_no_hinted_change(monkeypatch):
    catalog = generated_catalog()
    engine = _engine(catalog)
    real = MeshSnapshot.update
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in one rebuild")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MeshSnapshot, "update", flaky)
    first, second = catalog.instances_of("s4")[0], catalog.instances_of("s7")[0]
    one = Catalog.of(catalog.nodes, [replace(i, healthy=False) if i == first else i for i in catalog.instances])
    two = Catalog.of(one.nodes, [replace(i, healthy=False) if i == second else i for i in one.instances])
    engine.catalog_changed(CatalogUpdate(one, 2, changed_services=frozenset({"s4"})))
    engine.flush()  # fails: the snapshot stays, the fleet keeps its config
    engine.catalog_changed(CatalogUpdate(two, 3, changed_services=frozenset({"s7"})))  # relative to `one`
    engine.flush()
    assert engine.snapshot.hash == MeshSnapshot.build(two, (), "cluster.local").hash
    assert not engine.snapshot.catalog.instances_of("s4")[0].healthy


def test_a_disconnected_proxy_is_not_rebuilt_and_is_rebuilt_when_it_reconnects(monkeypatch):
    from meshcore.controlplane import engine as engine_mod

    catalog = generated_catalog()
    quiet = _QuietSources()
    cache = SnapshotCache()
    engine = MeshEngine(quiet, quiet, cache, trust_domain="cluster.local",  # type: ignore[arg-type]
                        metrics=ControlPlaneMetrics(), track_streams=True)
    infos = {n.name: ProxyInfo(node=n.name, secrets_dir=f"/var/lib/meshcore/{n.name}/secrets") for n in catalog.nodes}
    for info in infos.values():
        engine.proxy_connected(info)
        cache.stream_opened(info.node, f"{info.node}-1")
    engine.catalog_changed(CatalogUpdate(catalog, 1))
    engine.resources_changed([])
    assert engine.flush()
    gone = "vm0"
    cache.stream_closed(gone, f"{gone}-1")
    monkeypatch.setattr(engine_mod, "CONNECT_GRACE_S", 0.0)  # its registration is long past
    kept = cache.get(gone)
    assert kept is not None
    settings = replace(engine.settings, federated_bundles=(("other.example", "PEM"),))
    engine.set_settings(settings)  # reaches every proxy
    before = _builds(engine)
    engine.flush()
    rebuilt = _rebuilt(before, engine)
    assert gone not in rebuilt and rebuilt == set(infos) - {gone}
    assert cache.get(gone) is kept and engine.proxies[gone].missed  # its last config stays for a reconnect
    # Reconnecting (the authorizer calls proxy_connected before the stream is served) rebuilds it at once.
    engine.proxy_connected(infos[gone])
    assert not engine.proxies[gone].missed
    assert _wire(cache, gone) == _full(engine.snapshot, gone)[0] != []
    assert cache.get(gone).version != kept.version
    # Connected again: later changes reach it as before.
    cache.stream_opened(gone, f"{gone}-2")
    engine.set_settings(MeshSettings())
    before = _builds(engine)
    engine.flush()
    assert gone in _rebuilt(before, engine)
