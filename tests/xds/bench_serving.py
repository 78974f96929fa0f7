"""Focused benchmark of the xDS serving path (cache + ADS server), not a test.

* ``ProxySnapshot.of`` for one built proxy of a synthetic mesh (about 90 resources);
* N in-process-loopback ADS clients (a separate process of asyncio clients that behave like Envoy:
  CDS and LDS wildcard, then EDS and RDS by name, ACK everything), against the server in this process:
  time until all N have ACKed their first config, then the time from ``cache.set`` of an endpoint
  change on all N nodes until all N have ACKed it; the server process's threads and RSS with N
  streams open.

Run: ``python -m tests.xds.bench_serving --streams 200 500 [--protocol sotw|delta]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time

from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE


# --- the server side ----------------------------------------------------------------------------

def _built_proxies(nodes: int):
    from meshcore.snapshot import MeshSnapshot, ProxyInfo
    from meshcore.xds.build import build_proxy
    from tests.benchmarks.bench_build import synthetic_catalog

    catalog = synthetic_catalog(nodes, 3, 10)
    snap = MeshSnapshot.build(catalog, ())
    return [build_proxy(snap, ProxyInfo(node=f"vm{n}", secrets_dir="/tmp/secrets")) for n in range(nodes)]


def bench_of(built) -> dict:
    from meshcore.xds.cache import ProxySnapshot

    one = built[0]
    count = sum(len(v) for v in one.values())
    rounds = 200
    t0 = time.perf_counter()
    for _ in range(rounds):
        ProxySnapshot.of(one)
    per = (time.perf_counter() - t0) / rounds
    t0 = time.perf_counter()
    for _ in range(rounds):
        for msgs in one.values():
            for m in msgs:
                m.SerializeToString(deterministic=True)
    floor = (time.perf_counter() - t0) / rounds
    return {"resources": count, "of_ms": per * 1e3, "serialize_floor_ms": floor * 1e3}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _changed(resources: dict, round_: int) -> dict:
    out = {t: list(v) for t, v in resources.items()}
    if out.get(ENDPOINT):
        cla = type(out[ENDPOINT][0])()
        cla.CopyFrom(out[ENDPOINT][0])
        ep = cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        ep.port_value = 30000 + round_
        out[ENDPOINT][0] = cla
    return out


def _wait_all(cache, nodes: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(cache.synced(n) for n in nodes):
            return True
        time.sleep(0.005)
    return False


def _profile_loop(enable: bool, profiler) -> None:
    """Start or stop ``profiler`` on the ADS event loop's own thread (cProfile is per thread)."""
    from meshcore.xds.server import _event_loop

    done = threading.Event()

    def toggle() -> None:
        (profiler.enable if enable else profiler.disable)()
        done.set()

    _event_loop().call_soon_threadsafe(toggle)
    done.wait(5)


def bench_streams(built_all, streams: int, protocol: str, profile: bool = False) -> dict:
    from meshcore.xds.cache import ProxySnapshot, SnapshotCache
    from meshcore.xds.server import AdsServicer, allow_any_node, serve_ads

    cache = SnapshotCache()
    nodes = [f"vm{n}" for n in range(streams)]
    base = [built_all[n % len(built_all)] for n in range(streams)]
    for node, res in zip(nodes, base):
        cache.set(node, ProxySnapshot.of(res))
    threads_before, rss_before = threading.active_count(), _rss_mb()
    kwargs = {"max_workers": streams + 16} if "max_workers" in serve_ads.__code__.co_varnames else {}
    server, port = serve_ads(AdsServicer(cache, allow_any_node), "127.0.0.1:0", None, **kwargs)
    client = subprocess.Popen([sys.executable, "-m", "tests.xds.bench_serving", "--client", str(port),
                               "--streams", str(streams), "--protocol", protocol],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        ok = _wait_all(cache, nodes, 300)
        first = time.perf_counter() - t0
        connected = len(cache.connected_nodes())
        time.sleep(1.0)
        threads, rss = threading.active_count(), _rss_mb()
        changes = []
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            _profile_loop(True, profiler)
        for r in range(3):
            snaps = [ProxySnapshot.of(_changed(res, r)) for res in base]
            t0 = time.perf_counter()
            for node, snap in zip(nodes, snaps):
                cache.set(node, snap)
            done = _wait_all(cache, nodes, 120)
            changes.append((time.perf_counter() - t0) * 1e3 if done else float("nan"))
        if profiler is not None:
            import pstats

            _profile_loop(False, profiler)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        return {
            "protocol": protocol, "streams": streams, "connected": connected, "all_synced": ok,
            "first_config_s": round(first, 2), "change_to_all_acked_ms": [round(c, 1) for c in changes],
            "server_threads": threads, "threads_added": threads - threads_before,
            "rss_mb": round(rss, 1), "rss_added_mb": round(rss - rss_before, 1),
        }
    finally:
        client.kill()
        client.wait()
        server.stop(0).wait(10)


# --- the client side (a separate process) ---------------------------------------------------------

def _eds_names(response) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2

    names = []
    for packed in response:
        c = cluster_pb2.Cluster()
        packed.Unpack(c)
        if c.type == cluster_pb2.Cluster.EDS:
            names.append(c.eds_cluster_config.service_name or c.name)
    return names


def _rds_names(response) -> list[str]:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    names = set()
    for packed in response:
        lst = listener_pb2.Listener()
        packed.Unpack(lst)
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url.endswith("HttpConnectionManager"):
                    m = hcm.HttpConnectionManager()
                    f.typed_config.Unpack(m)
                    if m.HasField("rds"):
                        names.add(m.rds.route_config_name)
    return sorted(names)


def _follow(type_url: str, resources) -> tuple[str, list[str]] | None:
    """The type and names a response makes an Envoy subscribe to next (EDS after CDS, RDS after LDS)."""
    if type_url == CLUSTER:
        return ENDPOINT, _eds_names(resources)
    if type_url == LISTENER:
        return ROUTE, _rds_names(resources)
    return None


async def _sotw_client(stub, node_id: str) -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    queue: asyncio.Queue = asyncio.Queue()
    node = base_pb2.Node(id=node_id, cluster="bench")
    names: dict[str, list[str]] = {CLUSTER: [], LISTENER: []}

    async def requests():
        while True:
            yield await queue.get()

    for t in (CLUSTER, LISTENER):
        queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=t, node=node))
    async for resp in stub.StreamAggregatedResources(requests()):
        t = resp.type_url
        queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=t, node=node, version_info=resp.version_info,
                                                        response_nonce=resp.nonce, resource_names=names.get(t, [])))
        follow = _follow(t, resp.resources)
        if follow is not None:
            sub_type, wanted = follow
            if wanted != names.get(sub_type):
                names[sub_type] = wanted
                queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=sub_type, node=node, resource_names=wanted))


async def _delta_client(stub, node_id: str) -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    queue: asyncio.Queue = asyncio.Queue()
    node = base_pb2.Node(id=node_id, cluster="bench")
    names: dict[str, set[str]] = {}

    async def requests():
        while True:
            yield await queue.get()

    for t in (CLUSTER, LISTENER):
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=t, node=node))
    async for resp in stub.DeltaAggregatedResources(requests()):
        t = resp.type_url
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce))
        follow = _follow(t, [r.resource for r in resp.resources])
        if follow is not None:
            sub_type, listed = follow
            new = set(listed) - names.setdefault(sub_type, set())
            if new:
                names[sub_type] |= new
                queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=sub_type,
                                                                     resource_names_subscribe=sorted(new)))


async def _clients(port: int, streams: int, protocol: str) -> None:
    import grpc

    from envoy.service.discovery.v3 import ads_pb2_grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, streams // 50))]
    run = _delta_client if protocol == "delta" else _sotw_client
    tasks = [asyncio.ensure_future(run(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[i % len(channels)]),
                                       f"vm{i}")) for i in range(streams)]
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[200, 500])
    p.add_argument("--protocol", choices=["sotw", "delta"], default="sotw")
    p.add_argument("--profile", action="store_true", help="cProfile the ADS loop during the change rounds")
    p.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        asyncio.run(_clients(args.client, args.streams[0], args.protocol))
        return
    built = _built_proxies(200)
    print(json.dumps({"snapshot_of": bench_of(built)}), flush=True)
    for n in args.streams:
        print(json.dumps(bench_streams(built, n, args.protocol, args.profile)), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
