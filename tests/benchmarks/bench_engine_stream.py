"""The engine alone under a stream of changes, in process: CPU per change and per proxy update.

The throughput scenario of ``bench_scale`` measures the whole control plane from outside on a shared machine,
where the wall clock follows the other work on it. This measures what the engine itself spends (CPU time of
this process, the only busy one) for the same kind of stream, so the engine's capacity is a figure that does
not move with the load: changes per CPU-second and proxy updates per CPU-second.

A generated catalog (``tests/controlplane/measure_engine.scale_catalog``: 1,000 services / 5,000 instances by
default), ``--proxies`` connected in process (snapshot, build, validate, publish into the cache; no ADS).
Each round hands the engine ``--batch`` changes, as the builder takes a coalesced burst, then builds once
(``MeshEngine.flush``). ``--kind``:

* ``leaf``: instance adds and removals of leaf services (each a different service, 1-3 callers connected);
* ``mix``: the same, and one change in five a DestinationRule (connection pool) on a leaf service;
* ``mesh-wide``: a mesh-wide AuthorizationPolicy (every proxy), one per round.

Run: .venv/bin/python -m tests.benchmarks.bench_engine_stream [--kind leaf|mix|mesh-wide] [--batch 10]
     [--rounds 20] [--proxies 200] [--services 1000] [--profile FILE] [--compare-full]
``--profile`` writes a cProfile of the rounds (``python -m pstats FILE``); ``--compare-full`` also runs the
engine's ``--full-rebuild`` path over the same stream (the baseline, in the same process).
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import time
from dataclasses import replace

from meshcore.catalog.model import Catalog, CatalogUpdate, ServiceInstance
from meshcore.controlplane.engine import MeshEngine
from meshcore.resources.loader import load_documents
from meshcore.resources.model import Resource
from tests.controlplane.measure_engine import _engine, scale_catalog


def _dr(host: str, value: int) -> str:
    return (f"apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: bench-{host}\n"
            f"spec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: {value}\n")


def _mesh_wide(marker: str) -> str:
    return ("apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: bench-mesh-wide\n"
            "  namespace: meshcore-system\nspec:\n  rules:\n  - from:\n    - source:\n"
            f"        principals: [\"cluster.local/ns/default/sa/*\", \"cluster.local/ns/{marker}/sa/bench\"]\n")


class Stream:
    def __init__(self, catalog: Catalog, proxies: int, incremental: bool):
        self.base = catalog
        self.engine: MeshEngine = _engine(catalog, proxies, incremental)
        connected = {n.name for n in catalog.nodes[:proxies]}
        self.hosts = sorted(connected)
        callers: dict[str, set[str]] = {}
        for i in catalog.instances:
            if i.node in connected:
                for u in i.upstreams:
                    callers.setdefault(u.destination_name, set()).add(i.node)
        self.leaves = sorted(s for s, c in callers.items() if 1 <= len(c) <= 3)
        self.added: dict[str, ServiceInstance] = {}
        self.resources: dict[str, Resource] = {}
        self.k = 0

    def _instance_change(self, catalog: Catalog) -> tuple[Catalog, str]:
        service = self.leaves[self.k % len(self.leaves)]
        self.k += 1
        extra = self.added.pop(service, None)
        if extra is not None:
            return Catalog.of(catalog.nodes, [i for i in catalog.instances if i is not extra]), service
        host = self.base.node(self.hosts[(self.k * 7) % len(self.hosts)])
        assert host is not None
        added = replace(self.base.instances_of(service)[0], id=f"{service}-stream{self.k}", node=host.name,
                        mesh_address=host.address, port=40000 + self.k % 20000, mesh_port=60000 + self.k % 5000,
                        upstreams=())
        self.added[service] = added
        return Catalog.of(catalog.nodes, [*catalog.instances, added]), service

    def _resource(self, name: str, text: str) -> None:
        self.resources[name] = load_documents(text, name)[0]

    def round(self, kind: str, batch: int) -> int:
        """Hand the engine one round of changes (not built yet); how many changes it was."""
        engine = self.engine
        if kind == "mesh-wide":
            self.k += 1
            self._resource("mesh.yaml", _mesh_wide(f"m{self.k}"))
            engine.resources_changed(list(self.resources.values()))
            return 1
        catalog = engine.catalog()
        assert catalog is not None
        touched: set[str] = set()
        resources_changed = False
        for j in range(batch):
            if kind == "mix" and j % 5 == 4:
                service = self.leaves[(self.k * 13) % len(self.leaves)]
                self.k += 1
                self._resource(f"dr-{service}.yaml", _dr(service, 1000 + self.k))
                resources_changed = True
                continue
            catalog, service = self._instance_change(catalog)
            touched.add(service)
        if touched:
            engine.catalog_changed(CatalogUpdate(catalog, 1000 + self.k, changed_services=frozenset(touched)))
        if resources_changed:
            engine.resources_changed(list(self.resources.values()))
        return batch


def run(catalog: Catalog, args: argparse.Namespace, incremental: bool) -> dict:
    stream = Stream(catalog, args.proxies, incremental)
    m = stream.engine.metrics
    assert m is not None
    for _ in range(2):  # warm up: the first DestinationRule, the first policy, caches
        stream.round(args.kind, args.batch)
        stream.engine.flush()
    counters = (m.proxy_builds, m.proxy_reassemblies, m.proxy_policy_reruns, m.proxy_pushes)
    before = [c._value.get() for c in counters]
    cpu: list[float] = []
    changes = 0
    profile = cProfile.Profile() if args.profile and incremental else None
    for _ in range(args.rounds):
        n = stream.round(args.kind, args.batch)  # making the catalog is the source's work, not the engine's
        c0 = time.process_time()
        if profile is not None:
            profile.enable()
        stream.engine.flush()
        if profile is not None:
            profile.disable()
        cpu.append(time.process_time() - c0)
        changes += n
    if profile is not None:
        profile.dump_stats(args.profile)
    builds, reassemblies, reruns, pushes = (c._value.get() - b for c, b in zip(counters, before))
    total = sum(cpu)
    return {"mode": "incremental" if incremental else "full-rebuild", "rounds": args.rounds, "changes": changes,
            "cpu_s": round(total, 3), "cpu_ms_per_round_median": round(statistics.median(cpu) * 1e3, 1),
            "cpu_ms_per_change": round(total * 1e3 / changes, 2), "changes_per_cpu_s": round(changes / total, 1),
            "builds": builds, "reassemblies": reassemblies, "policy_reruns": reruns, "pushes": pushes,
            "cpu_ms_per_push": round(total * 1e3 / max(1, pushes), 3),
            "pushes_per_cpu_s": round(pushes / total, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("leaf", "mix", "mesh-wide"), default="mix")
    p.add_argument("--batch", type=int, default=10, help="changes per round (one coalesced build)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--proxies", type=int, default=200)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--profile", help="write a cProfile of the incremental rounds here")
    p.add_argument("--compare-full", action="store_true", help="also run the --full-rebuild path (baseline)")
    args = p.parse_args(argv)
    catalog = scale_catalog(args.services)
    rows = [run(catalog, args, True)]
    if args.compare_full:
        rows.append(run(catalog, args, False))
    print(f"{args.kind} stream: {args.rounds} rounds of {args.batch if args.kind != 'mesh-wide' else 1} changes, "
          f"{args.proxies} proxies, {args.services} services")
    for r in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
