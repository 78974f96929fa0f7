"""Benchmark: how fast a catalog change reaches a running Envoy.

A real mesh on loopback (control plane, agents, Envoys; the e2e test topology). Each sample adds a
service-definition file for a new reviews instance and times until n1's Envoy lists the endpoint
(admin /clusters), then removes it and times until it is gone. Baseline, in the same run and for the
same change: the time until the control plane reports a new mesh snapshot (its file source rescans
every 200 ms); the difference is what building, validating, pushing and Envoy applying add.

Run: make bench (or python -m tests.benchmarks.bench_convergence --samples 20)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get
from tests.e2e._topology import NODES, free_port, write_catalog


def _hosts(admin: str) -> set[str]:
    status, body = http_get(f"http://{admin}/clusters?format=json")
    out = set()
    for cl in json.loads(body).get("cluster_statuses", []):
        if cl["name"].startswith("outbound:reviews|"):
            for h in cl.get("host_statuses", []):
                sa = h["address"]["socket_address"]
                out.add(f"{sa['address']}:{sa['port_value']}")
    return out


def _until(pred, timeout=10.0) -> float:
    start = time.perf_counter()
    while not pred():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("change did not arrive within 10 s")
        time.sleep(0.005)
    return time.perf_counter() - start


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshcore-bench-") as tmp:
        state = Path(tmp)
        write_catalog(state / "consul.d")
        layout = MeshLayout(
            state_dir=state, catalog_dir=state / "consul.d",
            xds_bind=f"127.0.0.1:{free_port('127.0.0.1')}", api_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
            http_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
            admin={node: f"{addr}:{free_port(addr)}" for node, addr in NODES.items()}, agent_refresh="2s")
        mesh = LocalMesh(layout, progress=lambda m: print("  ..", m, flush=True))
        try:
            mesh.up()
            admin = layout.admin["n1"]

            def snapshot():
                return mesh.status()["control_plane"]["snapshot"]
            mesh_add, mesh_del, base_add, base_del = [], [], [], []
            for i in range(args.samples):
                port = free_port(NODES["n3"])
                path = layout.catalog_dir / "n3" / f"bench-{i}.json"
                definition = {"service": {"name": "reviews", "id": f"reviews-bench-{i}", "port": port + 1,
                                          "connect": {"sidecar_service": {"port": port}}}}
                target = f"{NODES['n3']}:{port}"
                before = snapshot()
                path.write_text(json.dumps(definition))
                t0 = time.perf_counter()
                base_add.append(_until(lambda before=before: snapshot() != before))
                mesh_add.append(time.perf_counter() - t0 + _until(lambda target=target: target in _hosts(admin)))
                before = snapshot()
                path.unlink()
                t0 = time.perf_counter()
                base_del.append(_until(lambda before=before: snapshot() != before))
                mesh_del.append(time.perf_counter() - t0 + _until(lambda target=target: target not in _hosts(admin)))
        finally:
            mesh.down()

    def row(name, values):
        ms = [v * 1000 for v in values]
        print(f"{name:<36} p50 {statistics.median(ms):6.0f} ms   p95 {_pct(ms, 0.95):6.0f} ms   max {max(ms):6.0f} ms")

    print(f"catalog change -> Envoy endpoints, {args.samples} samples each")
    row("add: new snapshot (baseline)", base_add)
    row("add: Envoy has the endpoint", mesh_add)
    row("remove: new snapshot (baseline)", base_del)
    row("remove: Envoy dropped the endpoint", mesh_del)


if __name__ == "__main__":
    main()
