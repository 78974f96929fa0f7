"""Focused measurement of the engine: CPU and wall time per change, full rebuild against incremental.

A generated catalog (default 1,000 services / 5,000 instances / 1,000 nodes, 3-5 upstreams per
service, a few services upstream of half the mesh), ``--proxies`` of its nodes connected in process
(no ADS: the cost measured is snapshot + build + validate + publish into the cache). Each scenario
changes one thing and drives one rebuild (``MeshEngine.flush``) in both modes.

Proxies use the agent's default secrets directory (one path on every VM, so replicas of a service share
their upstream clusters); ``--per-node-secrets`` gives each its own (nothing but assignments is shared).

Run: .venv/bin/python -m tests.controlplane.measure_engine [--services 1000 --proxies 200]
     [--coalescing | --connect | --memory (RSS per connected proxy)] [--per-node-secrets]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import replace

from meshcore.catalog.model import Catalog, CatalogUpdate, Node, ServiceInstance, Upstream
from meshcore.controlplane.engine import MeshEngine
from meshcore.controlplane.metrics import ControlPlaneMetrics
from meshcore.resources.loader import load_documents
from meshcore.snapshot import ProxyInfo
from meshcore.xds.cache import SnapshotCache


def scale_catalog(services: int, per_service: int = 5, seed: int = 1) -> Catalog:
    rng = random.Random(seed)
    popular = [f"svc{i}" for i in range(max(1, services // 200))]  # upstream of half the mesh
    nodes = [Node(name=f"vm{n}", address=f"10.{n // 250}.{n % 250}.10") for n in range(services)]
    slots = [0] * services
    instances = []
    for s in range(services):
        ups = {f"svc{rng.randrange(services)}" for _ in range(rng.randint(3, 5))} - {f"svc{s}"}
        if rng.random() < 0.5:
            ups.add(rng.choice(popular))
        upstreams = tuple(Upstream(destination_name=u, local_bind_port=20000 + k) for k, u in enumerate(sorted(ups)))
        for i in range(per_service):
            n = (s * per_service + i * 7) % services
            slot = slots[n]
            slots[n] += 1
            instances.append(ServiceInstance(
                service=f"svc{s}", id=f"svc{s}-{i}", node=f"vm{n}", port=8000 + slot, mesh_address=nodes[n].address,
                mesh_port=21000 + slot, meta=(("version", f"v{i % 3 + 1}"),),
                upstreams=tuple(replace(u, local_bind_port=u.local_bind_port + slot * 10) for u in upstreams)))
    return Catalog.of(nodes, instances)


class _Idle:
    def poll(self, index, wait):
        raise AssertionError("driven directly")

    def watch(self, index, wait):
        raise AssertionError("driven directly")

    def close(self) -> None:
        pass


SECRETS = {"agent default": lambda node: "/var/lib/meshcore-agent/secrets",
           "per node": lambda node: f"/var/lib/meshcore/{node}/secrets"}
secrets_of = SECRETS["agent default"]


def _engine(catalog: Catalog, proxies: int, incremental: bool) -> MeshEngine:
    idle = _Idle()
    engine = MeshEngine(idle, idle, SnapshotCache(), trust_domain="cluster.local",  # type: ignore[arg-type]
                        metrics=ControlPlaneMetrics(), incremental=incremental)
    for n in catalog.nodes[:proxies]:
        engine.proxy_connected(ProxyInfo(node=n.name, secrets_dir=secrets_of(n.name)))
    engine.catalog_changed(CatalogUpdate(catalog, 1))
    engine.resources_changed([])
    engine.flush()
    return engine


def _flip(catalog: Catalog, service: str) -> Catalog:
    target = catalog.instances_of(service)[0]
    return Catalog.of(catalog.nodes, [replace(i, healthy=not i.healthy) if i == target else i for i in catalog.instances])


def _measure(engine: MeshEngine, changes) -> dict:
    cpu, wall, builds, pushes, joins, reruns = [], [], [], [], [], []
    m = engine.metrics
    assert m is not None
    for make in changes:
        apply = make(engine)  # the source's work (a new catalog) is not the engine's: made before the clock starts
        b0, p0, r0 = m.proxy_builds._value.get(), m.proxy_pushes._value.get(), m.proxy_reassemblies._value.get()
        q0 = m.proxy_policy_reruns._value.get()
        w0, c0 = time.perf_counter(), time.process_time()
        apply()
        engine.flush()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        builds.append(m.proxy_builds._value.get() - b0)
        pushes.append(m.proxy_pushes._value.get() - p0)
        joins.append(m.proxy_reassemblies._value.get() - r0)
        reruns.append(m.proxy_policy_reruns._value.get() - q0)
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu), "builds": statistics.mean(builds),
            "pushes": statistics.mean(pushes), "reassembled": statistics.mean(joins), "reruns": statistics.mean(reruns)}


def measure_coalescing(catalog: Catalog, proxies: int, burst: int = 50, spacing_s: float = 0.002) -> None:
    """A deploy: ``burst`` instance changes ``spacing_s`` apart, through the builder thread; how many
    rebuilds it became and the delay coalescing added (single change: from the change to the swap)."""
    import threading

    engine = _engine(catalog, proxies, True)
    swapped = threading.Event()
    real = engine._rebuild
    began: list[float] = []

    def rebuild(pending, reason, cause):
        began.append(time.perf_counter())
        real(pending, reason, cause)
        swapped.set()

    engine._rebuild = rebuild  # type: ignore[method-assign]
    worker = threading.Thread(target=engine._build_loop, daemon=True)
    worker.start()
    services = catalog.service_names()
    current = catalog
    updates = []
    for k in range(burst):
        current = _flip(current, services[(k * 37) % len(services)])
        updates.append(CatalogUpdate(current, 1000 + k))
    m = engine.metrics
    assert m is not None
    count0 = m.coalesced_changes._sum.get()
    started = time.perf_counter()
    for u in updates:
        engine.catalog_changed(u)
        time.sleep(spacing_s)
    last = time.perf_counter()
    deadline = time.monotonic() + 60
    while m.coalesced_changes._sum.get() - count0 < burst and time.monotonic() < deadline:
        time.sleep(0.005)
    done = time.perf_counter()
    samples = {s.name: s.value for s in m.coalesced_changes.collect()[0].samples if not s.labels.get("le")}
    print(f"burst of {burst} changes {spacing_s * 1e3:.0f} ms apart ({(last - started) * 1e3:.0f} ms): "
          f"{samples['meshcore_coalesced_changes_count'] - 1:.0f} rebuilds, starting "
          f"{', '.join(f'{(b - started) * 1e3:.0f}' for b in began)} ms after the first change; all built "
          f"{(done - last) * 1e3:.0f} ms after the last change")
    delays = []
    for k in range(5):
        current = _flip(current, services[(k * 13) % len(services)])
        swapped.clear()
        t0 = time.perf_counter()
        engine.catalog_changed(CatalogUpdate(current, 2000 + k))
        swapped.wait(10)
        delays.append((began[-1] - t0) * 1e3)
    print(f"single change, change to rebuild start (quiet window {engine.quiet_s * 1e3:.0f} ms, bound "
          f"{engine.max_delay_s * 1e3:.0f} ms): median {statistics.median(delays):.0f} ms")
    engine.stop()


def measure_connect(catalog: Catalog, proxies: int, new: int = 8) -> None:
    """First-build latency of newly connecting proxies: idle, and during a mesh-wide rebuild of
    ``proxies`` proxies, with the builder yielding to them (default) and without."""
    import threading

    from meshcore.controlplane import engine as engine_mod

    def connect_all(engine: MeshEngine, first: int) -> list[float]:
        out = []
        for n in catalog.nodes[first:first + new]:
            t0 = time.perf_counter()
            engine.proxy_connected(ProxyInfo(node=n.name, secrets_dir=secrets_of(n.name)))
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    saved = engine_mod.CONNECT_PRIORITY_S
    results = {}
    for label, priority, during in (("idle", saved, False), ("during rebuild, builder yields", saved, True),
                                    ("during rebuild, no yielding", 0.0, True)):
        engine_mod.CONNECT_PRIORITY_S = priority
        engine = _engine(catalog, proxies, True)
        first = proxies + (0 if label == "idle" else new if priority else 2 * new)
        worker = None
        if during:
            engine.set_settings(replace(engine.settings, federated_bundles=(("other.example", "PEM"),)))
            worker = threading.Thread(target=engine.flush)
            worker.start()
            time.sleep(0.2)
        results[label] = connect_all(engine, first)
        if worker is not None:
            still = worker.is_alive()
            worker.join()
            results[label].append(-1.0 if not still else 0.0)
    engine_mod.CONNECT_PRIORITY_S = saved
    for label, values in results.items():
        lat = [v for v in values if v > 0]
        print(f"new connection's first build, {label}: median {statistics.median(lat):.0f} ms, "
              f"max {max(lat):.0f} ms ({len(lat)} proxies)")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure_memory(catalog: Catalog, proxies: int) -> None:
    """Resident memory the engine and cache hold per connected proxy (RSS before and after connecting
    ``proxies`` and building their configs), and what the cached snapshots hold in serialized bytes."""
    import gc

    _ = catalog.service_hashes, catalog.node_hashes  # the catalog's own indexes are not the proxies'
    gc.collect()
    before = _rss_mb()
    engine = _engine(catalog, proxies, True)
    gc.collect()
    after = _rss_mb()
    entries, total, unique = 0, 0, {}
    for node in engine.proxies:
        snap = engine.cache.get(node)
        assert snap is not None
        for type_url in snap.resources:
            for e in snap.entries(type_url).values():
                entries += 1
                total += len(e.body)
                unique[id(e)] = len(e.body)
    print(f"RSS {before:.1f} MB before, {after:.1f} MB with {proxies} proxies: {(after - before) / proxies:.3f} MB per "
          f"proxy; cached: {entries} entries, {total / 1e6:.1f} MB of bytes as served, "
          f"{sum(unique.values()) / 1e6:.1f} MB held ({len(unique)} distinct entries)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--proxies", type=int, default=200)
    p.add_argument("--rounds", type=int, default=6, help="changes per scenario, incremental mode")
    p.add_argument("--full-rounds", type=int, default=2, help="changes per scenario, full-rebuild mode (0: skip it)")
    p.add_argument("--coalescing", action="store_true", help="measure burst coalescing instead")
    p.add_argument("--connect", action="store_true", help="measure new connections during a rebuild instead")
    p.add_argument("--memory", action="store_true", help="measure resident memory per connected proxy instead")
    p.add_argument("--per-node-secrets", action="store_true", help="a secrets directory per proxy (no shared clusters)")
    args = p.parse_args(argv)
    global secrets_of
    secrets_of = SECRETS["per node" if args.per_node_secrets else "agent default"]
    catalog = scale_catalog(args.services)
    if args.connect:
        measure_connect(catalog, args.proxies)
        return
    if args.memory:
        measure_memory(catalog, args.proxies)
        return
    if args.coalescing:
        measure_coalescing(catalog, args.proxies)
        return
    connected = {n.name for n in catalog.nodes[:args.proxies]}
    # A leaf service: one no service calls; a popular one: the most called.
    called: dict[str, int] = {}
    for i in catalog.instances:
        for u in i.upstreams:
            called[u.destination_name] = called.get(u.destination_name, 0) + 1
    callers: dict[str, set[str]] = {}
    for i in catalog.instances:
        if i.node in connected:
            for u in i.upstreams:
                callers.setdefault(u.destination_name, set()).add(i.node)
    # Leaves: services called by one to three connected proxies (the average is 2.8).
    leaves = sorted(s for s, c in callers.items() if 1 <= len(c) <= 3)
    popular = max(called, key=lambda s: called[s])
    print(f"catalog: {len(catalog.service_names())} services, {len(catalog.instances)} instances, "
          f"{len(catalog.nodes)} nodes; {args.proxies} proxies connected in process")

    def flip(service: str, index: int, hint: bool = False):
        def make(engine: MeshEngine):
            current = engine.catalog()
            assert current is not None
            update = CatalogUpdate(_flip(current, service), index,
                                   changed_services=frozenset({service}) if hint else None)
            return lambda: engine.catalog_changed(update)
        return make

    def add_remove(service: str, k: int, port: int):
        """Odd ``k``: remove the instance the previous (even) one added on a connected node; what the
        benchmark's instance scenarios do (an add or remove changes endpoints, not protocol or identity)."""
        def make(engine: MeshEngine):
            current = engine.catalog()
            assert current is not None
            extra = f"{service}-extra"
            if k % 2:
                instances = [i for i in current.instances if not i.id.startswith(extra)]
            else:
                host = catalog.nodes[(k * 7) % args.proxies]
                added = replace(current.instances_of(service)[0], id=f"{extra}{k}", node=host.name,
                                mesh_address=host.address, port=port + k, mesh_port=port + 20000 + k, upstreams=())
                instances = [*current.instances, added]
            update = CatalogUpdate(Catalog.of(current.nodes, instances), 300 + k, changed_services=frozenset({service}))
            return lambda: engine.catalog_changed(update)
        return make

    def hinted_leaf_change(k: int):
        return flip(leaves[k % len(leaves)], 150 + k, hint=True)

    def leaf_change(k: int):
        return flip(leaves[k % len(leaves)], 100 + k)

    def popular_change(k: int):
        return flip(popular, 200 + k)

    def dr_change(k: int):
        dr = load_documents(f"""
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: {popular}
  trafficPolicy: {{loadBalancer: {{simple: {"LEAST_REQUEST" if k % 2 else "RANDOM"}}}}}
""", "dr.yaml")

        def make(engine: MeshEngine):
            return lambda: engine.resources_changed(dr)
        return make

    def mesh_wide_change(k: int):
        policy = load_documents(f"""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide, namespace: meshcore-system}}
spec:
  rules:
  - to:
    - operation:
        methods: ["GET", "POST"{', "PUT"' if k % 2 else ''}]
""", "mesh-wide.yaml")

        def make(engine: MeshEngine):
            return lambda: engine.resources_changed(policy)
        return make

    scenarios = [("leaf instance", leaf_change), ("leaf, src hint", hinted_leaf_change), ("popular instance", popular_change),
                 ("leaf add/remove", lambda k: add_remove(leaves[0], k, 9800)),
                 ("popular add/rm", lambda k: add_remove(popular, k, 9900)),
                 ("DestinationRule", dr_change), ("mesh-wide authz", mesh_wide_change)]
    rows = []
    for mode, incremental, rounds in (("incremental", True, args.rounds), ("full rebuild", False, args.full_rounds)):
        if rounds < 1:
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        engine = _engine(catalog, args.proxies, incremental)
        print(f"{mode}: first snapshot and {args.proxies} builds in {(time.perf_counter() - w0):.1f} s wall, "
              f"{(time.process_time() - c0):.1f} s CPU")
        for name, make in scenarios:
            rows.append((name, mode, _measure(engine, [make(k) for k in range(rounds)])))
    print(f"secrets directory: {'per node' if args.per_node_secrets else 'agent default (one path on every VM)'}")
    print(f"{'change':<18} {'mode':<13} {'wall ms':>9} {'CPU ms':>9} {'builds':>7} {'plugins':>7} {'re-asm':>7} "
          f"{'pushes':>7}")
    for name, mode, r in rows:
        print(f"{name:<18} {mode:<13} {r['wall_ms']:9.1f} {r['cpu_ms']:9.1f} {r['builds']:7.1f} {r['reruns']:7.1f} "
              f"{r['reassembled']:7.1f} {r['pushes']:7.1f}")


if __name__ == "__main__":
    main()
