"""Benchmark: building every proxy of bench_build's synthetic mesh with and without Sidecar scoping.

With a Sidecar per service (each listing two of its three upstreams, plus a ServiceEntry wildcard), a mesh-wide
Sidecar and 50 ServiceEntries, against the same mesh without them: the scope is computed in generation
(``meshcore.xds.generate.sidecar_scope``, called by every ``outbound_bindings``), so this shows its cost against
what it saves (the upstreams left out are never built).

Run: python -m tests.benchmarks.bench_sidecar_scope --nodes 100
"""

from __future__ import annotations

import argparse
import statistics
import time

from meshcore.compose import build_proxy
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds.generate import CLUSTER
from tests.benchmarks.bench_build import synthetic_catalog


def scoping_resources(catalog) -> list:
    services = sorted({i.service for i in catalog.instances})
    docs = ["apiVersion: networking.mesh.io/v1beta1\nkind: Sidecar\nmetadata: {name: mesh, namespace: meshcore-system}\n"
            "spec: {egress: [{hosts: ['*/*']}]}\n"]
    for s in services:
        ups = sorted({u.destination_name for i in catalog.instances_of(s) for u in i.upstreams})
        hosts = ", ".join(f"'./{u}'" for u in ups[:2])
        docs.append(f"apiVersion: networking.mesh.io/v1beta1\nkind: Sidecar\nmetadata: {{name: {s}}}\n"
                    f"spec: {{workloadSelector: {{labels: {{app: {s}}}}}, egress: [{{hosts: [{hosts}, '*/*.example.com']}}]}}\n")
    for k in range(50):
        docs.append(f"apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: e{k}}}\n"
                    f"spec: {{hosts: [h{k}.example.com], ports: [{{number: 443, name: tls, protocol: TLS}}], "
                    "resolution: DNS}\n")
    return load_documents("---\n".join(docs), "bench.yaml")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    catalog = synthetic_catalog(args.nodes, 3, 3)
    resources = scoping_resources(catalog)
    proxies = [ProxyInfo(node=f"vm{n}", secrets_dir="/s") for n in range(args.nodes)]
    print(f"build every proxy of {args.nodes} nodes (median of {args.rounds} rounds)")
    for label, res in (("no Sidecars", []), (f"{sum(r.kind == 'Sidecar' for r in resources)} Sidecars + 50 "
                                              "ServiceEntries", resources)):
        snap = MeshSnapshot.build(catalog, res)
        times, clusters = [], 0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            clusters = sum(len(build_proxy(snap, proxy)[CLUSTER]) for proxy in proxies)
            times.append(time.perf_counter() - t0)
        print(f"  {label:34s} {statistics.median(times) * 1e3:8.1f} ms   {clusters} clusters in all")


if __name__ == "__main__":
    main()
