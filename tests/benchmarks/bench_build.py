"""Benchmark: building and publishing every proxy's configuration for a large mesh.

A synthetic catalog (N nodes, each running S services, each service with U upstreams, 3 instances
per service) goes through the real path: MeshSnapshot.build -> build_proxy -> publish (validation,
cross-checks, content hashing, cache). Baseline, measured in the same process on the same output:
serializing the built resources with protobuf alone, the least any control plane must spend to
put the same configuration on the wire.

Run: make bench (or python -m tests.benchmarks.bench_build --nodes 200)
"""

from __future__ import annotations

import argparse
import statistics
import time

from meshcore.catalog.model import Catalog, Node, ServiceInstance, Upstream
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.validate import publish


def synthetic_catalog(nodes: int, services_per_node: int, upstreams: int) -> Catalog:
    n_services = max(1, nodes * services_per_node // 3)  # 3 instances of each service
    node_objs, instances = [], []
    slot = 0
    for n in range(nodes):
        addr = f"10.{n // 250}.{n % 250}.10"
        node_objs.append(Node(name=f"vm{n}", address=addr))
        for s in range(services_per_node):
            svc = slot % n_services
            slot += 1
            ups = tuple(Upstream(destination_name=f"svc{(svc + k + 1) % n_services}", local_bind_port=20000 + s * upstreams + k)
                        for k in range(upstreams))
            instances.append(ServiceInstance(
                service=f"svc{svc}", id=f"svc{svc}-{n}", node=f"vm{n}", port=8000 + s, mesh_address=addr,
                mesh_port=21000 + s, meta=(("version", f"v{n % 3 + 1}"),), upstreams=ups,
            ))
    return Catalog.of(node_objs, instances)


def run(nodes: int, services_per_node: int, upstreams: int, rounds: int) -> dict:
    catalog = synthetic_catalog(nodes, services_per_node, upstreams)
    proxies = [ProxyInfo(node=f"vm{n}", secrets_dir="/var/lib/meshcore-agent/secrets") for n in range(nodes)]
    full, baseline, snap_times = [], [], []
    resources_per_proxy = 0
    for _round in range(rounds):
        cache = SnapshotCache()
        t0 = time.perf_counter()
        snap = MeshSnapshot.build(catalog, ())
        snap_times.append(time.perf_counter() - t0)
        built_all = []
        t0 = time.perf_counter()
        for proxy in proxies:
            built = build_proxy(snap, proxy)
            publish(cache, proxy.node, built)
            built_all.append(built)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for built in built_all:
            for msgs in built.values():
                for m in msgs:
                    m.SerializeToString(deterministic=True)
        baseline.append(time.perf_counter() - t0)
        resources_per_proxy = sum(len(v) for v in built_all[0].values())
    med_full, med_base = statistics.median(full), statistics.median(baseline)
    return {
        "nodes": nodes, "instances": len(catalog.instances), "resources_per_proxy": resources_per_proxy,
        "snapshot_ms": statistics.median(snap_times) * 1e3,
        "all_proxies_ms": med_full * 1e3, "per_proxy_ms": med_full / nodes * 1e3,
        "baseline_serialize_ms": med_base * 1e3, "ratio_to_baseline": med_full / med_base,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--services-per-node", type=int, default=3)
    p.add_argument("--upstreams", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print("build + validate + publish every proxy (median of rounds); baseline = protobuf serialization "
          "of the same resources")
    print(f"{'nodes':>6} {'instances':>9} {'res/proxy':>9} {'snapshot':>9} {'all proxies':>12} {'per proxy':>10} "
          f"{'baseline':>9} {'x baseline':>10}")
    for n in args.nodes:
        r = run(n, args.services_per_node, args.upstreams, args.rounds)
        print(f"{r['nodes']:>6} {r['instances']:>9} {r['resources_per_proxy']:>9} {r['snapshot_ms']:>7.1f}ms "
              f"{r['all_proxies_ms']:>10.0f}ms {r['per_proxy_ms']:>8.2f}ms {r['baseline_serialize_ms']:>7.0f}ms "
              f"{r['ratio_to_baseline']:>9.1f}x", flush=True)


if __name__ == "__main__":
    main()
