"""Benchmark: the control plane at fleet scale, measured from outside like a fleet of Envoys sees it.

A generated mesh (default 1,000 services / 5,000 instances / 1,000 nodes, 3-5 upstreams per service,
a few services upstream of half the mesh; see _scale_mesh.py) on the file source or in the Consul
double. The real ``meshcore-control-plane`` runs as a process. N synthetic ADS clients (real node SVIDs
from join tokens and the agent API, mTLS, CDS/LDS then EDS/RDS by name, ACK/NACK like Envoy; see
_scale_ads.py) connect from this one process, plus real agents with real Envoys whose ``/config_dump``
is compared with what a synthetic client of the same node received.

Scenarios, each timed from the change until every affected proxy has ACKed a config that holds it
(per-proxy latencies, p50/p99/max; ``change_*_ms`` are per change, until the last affected proxy):
  leaf-instance      add/remove one instance of a service few proxies call
  popular-instance   add/remove one instance of a service half the mesh calls
  destination-rule   a DestinationRule (connection pool) on a popular service
  mesh-wide-authz    an AuthorizationPolicy in the root namespace (every proxy)
  nack-recover       3 proxies NACK the next CDS; until they ACK the re-offer
  sustained          a burst of instance changes: ACKed proxy updates per second
  throughput-R       a stream of changes at R per second, R rising until the engine falls behind: changes
                     absorbed per second, proxy updates per second, coalescing, change-to-ACK latency
                     (_scale_throughput.py)
  reconnect-storm    the control plane restarts; until every proxy has ACKed all types again
and the footprint: initial sync, control plane RSS per connected proxy and threads, idle CPU of the
control plane and of an agent, config bytes per proxy against its upstreams and the mesh size, CPU per
change. Baselines in the same run, so the figures are ratios: protobuf serialization of each proxy's
received config (the floor), and the control plane's ``--full-rebuild`` path when it has that flag
(without it, the current code is the full-rebuild path and is what is measured).

Run: python -m tests.benchmarks.bench_scale [--short] [--proxies 200] [--catalog file|consul]
     [--xds sotw|delta|auto]; results in test-artifacts/bench/scale.json, a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Coroutine
from typing import Any

from meshcore import naming
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.demo.launcher import MeshLayout, http_get, wait_until
from tests.e2e._topology import free_port

from . import _scale_mesh as meshgen
from . import _scale_throughput
from ._scale_ads import CDS, EDS, LDS, RDS, MESSAGE, SyntheticProxy
from ._scale_procs import BenchMesh, cpu_seconds, has_full_rebuild_flag, idle_cpu, load_average, rss_bytes, spawn, stop, threads

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "bench"

SHORT = dict(proxies=12, services=60, instances=240, nodes=60, samples=2, idle=4.0, burst=3, envoys=1,
             rates="10,20,40", rate_seconds=2.0)
FULL = dict(proxies=200, services=1000, instances=5000, nodes=1000, samples=6, idle=20.0, burst=10, envoys=3,
            rates="25,50,100,200,400,800,1600", rate_seconds=4.0)
SCENARIOS = ("leaf-instance", "popular-instance", "destination-rule", "mesh-wide-authz", "nack-recover", "sustained",
             "throughput", "envoy-config-dump", "reconnect-storm")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))] if v else 0.0


@dataclass
class Result:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    change_ms: list[float] = field(default_factory=list)

    def row(self, base: dict) -> dict:
        out: dict[str, Any] = {"name": self.name, **base}
        if self.latencies_ms:
            out.update(p50_ms=round(pct(self.latencies_ms, 0.5), 1), p99_ms=round(pct(self.latencies_ms, 0.99), 1),
                       max_ms=round(max(self.latencies_ms), 1), samples=len(self.latencies_ms))
        else:
            out.update(p50_ms=None, p99_ms=None, max_ms=None, samples=0)
        if self.change_ms:
            out.update(changes=len(self.change_ms), change_p50_ms=round(pct(self.change_ms, 0.5), 1),
                       change_ms_each=[round(v) for v in self.change_ms],
                       change_max_ms=round(max(self.change_ms), 1))
        out.update(self.figures)
        out["load_average"] = load_average()
        return out


class Bench:
    def __init__(self, args: argparse.Namespace, state: Path):
        self.args, self.state = args, state
        self.plan = meshgen.generate(args.services, args.instances, args.nodes, seed=args.seed)
        names = sorted(self.plan.nodes)
        self.envoy_nodes = names[:args.envoys]
        self.synthetic_nodes = names[args.envoys:args.envoys + args.proxies]
        for node in self.envoy_nodes:
            meshgen.repick_ports(self.plan, node, free_port)
        self.catalog_dir = state / "consul.d"
        self.consul_proc: subprocess.Popen | None = None
        self.consul: meshgen.ConsulWriter | None = None
        self.results: list[Result] = []
        self.proxies: dict[str, SyntheticProxy] = {}
        self.identities: dict[str, tuple[str, str]] = {}
        self.full_rebuild_flag = has_full_rebuild_flag()
        self.mesh: BenchMesh | None = None
        self.rng = random.Random(args.seed + 1)

    # --- setup ----------------------------------------------------------------------------------
    def start(self, extra_args: list[str]) -> None:
        a = self.args
        env: dict[str, str] = {}
        if a.catalog == "consul":
            port = free_port("127.0.0.1")
            self.consul_proc = spawn([sys.executable, "-m", "tests.consul_double", "--bind", f"127.0.0.1:{port}"],
                                     self.state / "logs" / "consul-double.log", cwd=REPO)
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_get(url + "/v1/status/leader")[0] == 200, 30, "the Consul double to listen")
            self.consul = writer = meshgen.ConsulWriter(url)
            t0 = time.monotonic()
            writer.register_plan(self.plan)
            progress(f"registered {len(self.plan.instances)} instances in the Consul double in {time.monotonic() - t0:.1f}s")
            env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{port}"
            spec = "consul"
        else:
            meshgen.write_files(self.plan, self.catalog_dir)
            spec = f"files:{self.catalog_dir}"
        self.changes = meshgen.CatalogChanges(self.plan, None if self.consul else self.catalog_dir, self.consul)
        layout = MeshLayout(
            state_dir=self.state, catalog_dir=self.catalog_dir,
            xds_bind=f"127.0.0.1:{free_port('127.0.0.1')}", api_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
            http_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
            admin={n: f"{self.plan.nodes[n]}:{free_port(self.plan.nodes[n])}" for n in self.envoy_nodes},
            agent_refresh="5s")
        self.mesh = BenchMesh(layout, progress, catalog=spec, env=env, extra_args=extra_args)
        self.start_control_plane()

    def start_control_plane(self) -> float:
        mesh = self.mesh
        assert mesh is not None
        t0 = time.monotonic()
        mesh.start_control_plane()
        wait_until(lambda: mesh.status()["control_plane"]["snapshot"], 300, "the first mesh snapshot", interval=0.5)
        return time.monotonic() - t0

    def operator(self, path: str, body: dict) -> dict:
        assert self.mesh is not None
        req = urllib.request.Request(self.mesh.cp_info["http"] + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **self.mesh.auth_headers()})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def apply(self, name: str, content: str) -> None:
        self.operator("/v1/resources", {"files": [{"name": name, "content": content}]})

    def enroll(self, node: str) -> tuple[str, str]:
        """A node SVID the way an agent gets one: a join token (operator API), a key made here, a CSR."""
        from meshcore.agent.client import AgentClient

        assert self.mesh is not None
        token = self.operator("/v1/tokens", {"node": node, "ttl": "1h"})["token"]
        key = new_private_key()
        client = AgentClient(self.mesh.cp_info["api"], Path(self.mesh.cp_info["ca_file"]), timeout=120)
        issued = client.join(node, token, make_csr(key, naming.node_spiffe_id(self.trust_domain, node)))
        return key_to_pem(key), issued.chain

    @property
    def trust_domain(self) -> str:
        assert self.mesh is not None
        return str(self.mesh.cp_info.get("trust_domain") or naming.DEFAULT_TRUST_DOMAIN)

    def enroll_all(self, nodes: list[str]) -> Result:
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for node, ident in zip(nodes, pool.map(self.enroll, nodes)):
                self.identities[node] = ident
        wall = time.monotonic() - t0
        progress(f"enrolled {len(nodes)} nodes (join token + CSR -> node SVID) in {wall:.1f}s")
        return Result("join", {"nodes": len(nodes), "seconds": round(wall, 2),
                               "svids_per_s": round(len(nodes) / wall, 1) if wall else None})

    def make_proxy(self, node: str, secrets_dir: str) -> SyntheticProxy:
        assert self.mesh is not None
        key_pem, chain_pem = self.identities[node]
        bundle = Path(self.mesh.cp_info["ca_file"]).read_text()
        return SyntheticProxy(node, self.mesh.cp_info["xds"], key_pem=key_pem, chain_pem=chain_pem,
                              bundle_pem=bundle, secrets_dir=secrets_dir, xds=self.args.xds)

    @property
    def cp_pid(self) -> int:
        assert self.mesh is not None and self.mesh.cp is not None
        return self.mesh.cp.pid

    # --- waiting --------------------------------------------------------------------------------
    async def wait_all(self, proxies: list[SyntheticProxy], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = sum(p.synced for p in proxies)
            if done == len(proxies):
                return
            if time.monotonic() > deadline:
                errors: dict[str, int] = {}
                for p in proxies:
                    for k, v in p.stats.errors.items():
                        errors[k] = errors.get(k, 0) + v
                raise TimeoutError(f"{what}: {done}/{len(proxies)} proxies synced after {timeout:.0f}s "
                                   f"(stream errors {errors}, streams {sum(p.stats.streams for p in proxies)}, "
                                   f"last: {proxies[0].last_error!r}; control plane exit code "
                                   f"{self.mesh.cp.poll() if self.mesh and self.mesh.cp else '-'})")
            await asyncio.sleep(0.05)

    async def quiet(self, seconds: float = 1.0, timeout: float = 120.0) -> None:
        """Until no synthetic proxy has received anything for ``seconds`` (the control plane is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max((p.last_ack for p in self.proxies.values()), default=0.0)
            if time.monotonic() - last >= seconds:
                return
            await asyncio.sleep(0.1)

    async def change(self, result: Result, do, watches: dict[str, Any], timeout: float) -> None:
        """Make one change (``do``, blocking, in a thread) and time it until every watched proxy has it."""
        pids = self.cp_pid
        cpu0 = cpu_seconds(pids)
        before = {n: p.stats.responses for n, p in self.proxies.items()}
        futs = {n: self.proxies[n].watch(pred) for n, pred in watches.items()}
        t0 = time.monotonic()
        await asyncio.to_thread(do)
        result.figures.setdefault("_write", []).append((time.monotonic() - t0) * 1000)
        done, pending = await asyncio.wait(futs.values(), timeout=timeout)
        if pending:
            missing = sorted(n for n, f in futs.items() if not f.done())
            for f in pending:
                f.cancel()
            raise TimeoutError(f"{result.name}: {len(missing)}/{len(futs)} affected proxies had not ACKed the change "
                               f"after {timeout:.0f}s (e.g. {missing[:3]})")
        lat = [(f.result() - t0) * 1000 for f in futs.values()]
        result.latencies_ms.extend(lat)
        result.change_ms.append(max(lat) if lat else 0.0)
        await self.quiet(0.7)
        result.figures.setdefault("_cpu", []).append(cpu_seconds(pids) - cpu0)
        pushed = sum(1 for n, p in self.proxies.items() if p.stats.responses > before[n])
        result.figures.setdefault("_affected", []).append(len(futs))
        result.figures.setdefault("_pushed", []).append(pushed)

    @staticmethod
    def finish(result: Result) -> Result:
        cpu, aff, pushed, write = (result.figures.pop(k, []) for k in ("_cpu", "_affected", "_pushed", "_write"))
        if write:  # the change's own write (a file, a Consul registration, the operator API's apply) until it returned
            result.figures["write_ms_median"] = round(statistics.median(write), 1)
            result.figures["write_ms_max"] = round(max(write), 1)
        if cpu:
            result.figures["cpu_s_per_change"] = round(statistics.median(cpu), 3)
            result.figures["affected_proxies_per_change"] = round(statistics.mean(aff), 1)
            result.figures["pushed_proxies_per_change"] = round(statistics.mean(pushed), 1)
            per = [c / max(1, p) for c, p in zip(cpu, pushed)]
            result.figures["cpu_ms_per_pushed_proxy"] = round(statistics.median(per) * 1000, 2)
        return result

    # --- predicates -----------------------------------------------------------------------------
    @staticmethod
    def has_endpoint(service: str, addr: str, port: int, present: bool = True):
        cluster = meshgen.endpoint_cluster(service)

        def pred(p: SyntheticProxy) -> bool:
            cla = p.message(EDS, cluster)
            found = cla is not None and any(
                lb.endpoint.address.socket_address.address == addr and lb.endpoint.address.socket_address.port_value == port
                for ep in cla.endpoints for lb in ep.lb_endpoints)
            return found == present
        return pred

    @staticmethod
    def has_listener(name: str, present: bool = True):
        return lambda p: (name in p.types[LDS].resources) == present

    @staticmethod
    def max_connections(service: str, value: int):
        prefix = f"outbound:{service}|"

        def pred(p: SyntheticProxy) -> bool:
            names = [n for n in p.types[CDS].resources if n.startswith(prefix)]
            if not names:
                return False
            for n in names:
                c = p.message(CDS, n)
                th = c.circuit_breakers.thresholds
                if not th or th[0].max_connections.value != value:
                    return False
            return True
        return pred

    @staticmethod
    def contains(marker: bytes, types=(LDS, RDS)):
        return lambda p: any(marker in raw for t in types for raw in p.types[t].resources.values())

    def connected_callers(self, service: str) -> set[str]:
        return self.plan.nodes_calling(service) & set(self.proxies)

    # --- scenarios ------------------------------------------------------------------------------
    async def instance_scenario(self, name: str, service: str, samples: int) -> Result:
        r = Result(name, {"service": service})
        for i in range((samples + 1) // 2):
            host = self.rng.choice(list(self.proxies))
            inst = self.changes.new_instance(service, host)
            addr = self.plan.nodes[host]
            listener = naming.inbound_listener(inst.id)
            callers = self.connected_callers(service)
            watches: dict[str, Any] = {n: self.has_endpoint(service, addr, inst.mesh_port) for n in callers}
            watches[host] = self.has_listener(listener)
            await self.change(r, lambda inst=inst: self.changes.add(inst), watches, self.args.timeout)
            progress(f"  {name} {2 * i + 1}/{samples}: added {inst.id} on {host}: {len(watches)} proxies in "
                     f"{r.change_ms[-1]:.0f} ms")
            if 2 * i + 1 >= samples:
                self.changes.remove(inst)
                await self.quiet(0.7)
                break
            watches = {n: self.has_endpoint(service, addr, inst.mesh_port, present=False) for n in callers}
            watches[host] = self.has_listener(listener, present=False)
            await self.change(r, lambda inst=inst: self.changes.remove(inst), watches, self.args.timeout)
            progress(f"  {name} {2 * i + 2}/{samples}: removed {inst.id}: {len(watches)} proxies in {r.change_ms[-1]:.0f} ms")
        return self.finish(r)

    async def destination_rule(self, service: str, samples: int) -> Result:
        r = Result("destination-rule", {"service": service})
        callers = self.connected_callers(service)
        for i in range(samples):
            value = 1000 + i + self.rng.randint(0, 10_000) * 16
            await self.change(r, lambda value=value: self.apply("bench-dr.yaml", meshgen.destination_rule(service, value)),
                              {n: self.max_connections(service, value) for n in callers}, self.args.timeout)
            progress(f"  destination-rule {i + 1}/{samples}: {len(callers)} proxies in {r.change_ms[-1]:.0f} ms")
        return self.finish(r)

    async def mesh_wide_authz(self, samples: int) -> Result:
        r = Result("mesh-wide-authz")
        for i in range(samples):
            marker = f"bench-{i}-{self.rng.randint(0, 1 << 30)}x"
            await self.change(r, lambda marker=marker: self.apply("bench-authz.yaml", meshgen.mesh_wide_policy(marker)),
                              {n: self.contains(f"ns/{marker}/sa".encode()) for n in self.proxies}, self.args.timeout)
            progress(f"  mesh-wide-authz {i + 1}/{samples}: {len(self.proxies)} proxies in {r.change_ms[-1]:.0f} ms")
        return self.finish(r)

    async def nack_recover(self, service: str) -> Result:
        """Some proxies NACK the next CDS: the rest converge; they get it again after the server's backoff."""
        r = Result("nack-recover", {"service": service})
        callers = sorted(self.connected_callers(service))
        nackers = callers[:3]
        for n in nackers:
            self.proxies[n].nack_next.add(CDS)
        value = 77_777
        nacks0 = sum(self.proxies[n].stats.nacks for n in nackers)
        await self.change(r, lambda: self.apply("bench-dr.yaml", meshgen.destination_rule(service, value)),
                          {n: self.max_connections(service, value) for n in callers}, self.args.timeout)
        r.figures["nacked"] = sum(self.proxies[n].stats.nacks for n in nackers) - nacks0
        r.figures["nacking_proxies"] = len(nackers)
        progress(f"  nack-recover: {len(nackers)} proxies NACKed, all {len(callers)} had it in {r.change_ms[-1]:.0f} ms")
        return self.finish(r)

    async def sustained(self, service: str, burst: int) -> Result:
        """``burst`` instance adds, written back to back, then as many removals: ACKed updates per second."""
        r = Result("sustained", {"service": service, "burst": burst})
        callers = self.connected_callers(service)
        hosts = [self.rng.choice(list(self.proxies)) for _ in range(burst)]
        insts = [self.changes.new_instance(service, h) for h in hosts]
        total_acks, total_s, cpu = 0, 0.0, 0.0
        for present in (True, False):
            def pred(p: SyntheticProxy, present=present) -> bool:
                return all(self.has_endpoint(service, self.plan.nodes[i.node], i.mesh_port, present)(p) for i in insts)
            futs = [self.proxies[n].watch(pred) for n in callers]
            acks0 = sum(p.stats.acks for p in self.proxies.values())
            cpu0 = cpu_seconds(self.cp_pid)
            t0 = time.monotonic()
            for inst in insts:
                await asyncio.to_thread(self.changes.add if present else self.changes.remove, inst)
            _, pending = await asyncio.wait(futs, timeout=self.args.timeout)
            if pending:  # a finding, not a crash: say which instances which callers lack
                for f in pending:
                    f.cancel()
                lacking = {i.id: sum(not self.has_endpoint(service, self.plan.nodes[i.node], i.mesh_port, present)(
                    self.proxies[n]) for n in callers) for i in insts}
                r.figures["error"] = (f"{'adds' if present else 'removals'}: {len(pending)}/{len(futs)} callers lacked "
                                      f"the burst after {self.args.timeout:.0f}s; callers lacking each instance: "
                                      f"{ {k: v for k, v in lacking.items() if v} }")
                progress(f"  sustained: {r.figures['error']}")
                if present:  # leave the catalog as it was for the scenarios after this one
                    for inst in insts:
                        await asyncio.to_thread(self.changes.remove, inst)
                break
            t1 = time.monotonic()
            total_acks += sum(p.stats.acks for p in self.proxies.values()) - acks0
            total_s += t1 - t0
            r.latencies_ms.extend((f.result() - t0) * 1000 for f in futs)
            await self.quiet(0.7)
            cpu += cpu_seconds(self.cp_pid) - cpu0
        r.figures.update(updates_per_s=round(total_acks / total_s, 1) if total_s else None,
                         acked_updates=total_acks, changes=2 * burst, seconds=round(total_s, 2),
                         affected_proxies=len(callers), cpu_s=round(cpu, 2))
        progress(f"  sustained: {total_acks} proxy updates ACKed in {total_s:.1f}s = {r.figures['updates_per_s']}/s")
        return r

    async def reconnect_storm(self) -> Result:
        """Restart the control plane (same ports, same state) and time until every proxy is back in sync.

        A proxy is back when it has ACKed every type on a new stream, or, on delta, when its new stream
        (which announced the versions it holds) is one the control plane counts as connected and synced:
        a delta server sends nothing to a reconnect whose versions are current, and Envoy waits for nothing.
        """
        assert self.mesh is not None
        progress("  reconnect-storm: restarting the control plane")
        t0 = time.monotonic()
        await asyncio.to_thread(self.mesh.stop_control_plane)
        stopped = time.monotonic()
        await asyncio.to_thread(self.start_control_plane)
        ready = time.monotonic()
        proxies = list(self.proxies.values())
        back_at: dict[str, float] = {}
        deadline = ready + self.args.storm_timeout
        error = ""
        while len(back_at) < len(proxies):
            try:
                status = await asyncio.to_thread(self.mesh.status)
            except OSError as exc:  # the operator API is busy serving the storm: ask again
                status = {"proxies": []}
                error = f"status: {exc}"
            now = time.monotonic()
            server = {p["node"] for p in status.get("proxies", []) if p.get("connected") and p.get("synced")}
            for p in proxies:
                if p.node in back_at:
                    continue
                if p.synced_at > stopped:
                    back_at[p.node] = p.synced_at
                elif p.node in server and p.stream_started_at > stopped:
                    back_at[p.node] = now
            if now > deadline:
                errors: dict[str, int] = {}
                for p in proxies:
                    for k, v in p.stats.errors.items():
                        errors[k] = errors.get(k, 0) + v
                error = (f"{len(back_at)}/{len(proxies)} proxies back in sync after {deadline - ready:.0f}s "
                         f"(stream errors {errors}, last: {proxies[0].last_error!r})")
                progress(f"  reconnect-storm: {error}")
                break
            error = ""
            await asyncio.sleep(0.25)
        last = max(back_at.values(), default=ready)
        lat = [(t - ready) * 1000 for t in back_at.values()]
        r = Result("reconnect-storm", {"stop_s": round(stopped - t0, 2), "restart_to_ready_s": round(ready - stopped, 2),
                                       "resynced": len(back_at), "of": len(proxies),
                                       "resynced_by_ack": sum(p.synced_at > stopped for p in proxies),
                                       "ready_to_all_synced_ms": round((last - ready) * 1000, 1) if not error else None,
                                       **({"error": error} if error else {})}, latencies_ms=lat)
        progress(f"  reconnect-storm: stopped in {stopped - t0:.1f}s, ready after {ready - stopped:.1f}s; "
                 f"{len(back_at)}/{len(proxies)} resynced, the last {(last - ready) * 1000:.0f} ms later")
        return r

    # --- footprint and baselines ----------------------------------------------------------------
    def config_bytes(self) -> Result:
        per = {n: p.config_bytes() for n, p in self.proxies.items()}
        bindings = {n: self.plan.upstream_bindings(n) for n in self.proxies}
        xs = [bindings[n] for n in per]
        ys = [per[n] for n in per]
        slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else None
        return Result("config-bytes", {
            "bytes_per_proxy_p50": int(statistics.median(ys)), "bytes_per_proxy_max": max(ys),
            "upstream_bindings_p50": statistics.median(xs),
            "bytes_per_upstream_binding": round(slope) if slope is not None else None,
            "resources_per_proxy_p50": statistics.median(
                [sum(len(t.resources) for t in p.types.values()) for p in self.proxies.values()]),
            "mesh_services": len(self.plan.services), "mesh_instances": len(self.plan.instances)})

    def serialization_floor(self) -> Result:
        """Protobuf serialization of every proxy's received config, in this process: the least any
        control plane spends to put the same bytes on the wire."""
        msgs = [MESSAGE[t].FromString(raw) for p in self.proxies.values() for t in (CDS, EDS, LDS, RDS)
                for raw in p.types[t].resources.values()]
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for m in msgs:
                m.SerializeToString(deterministic=True)
            runs.append(time.perf_counter() - t0)
        per_proxy = min(runs) / max(1, len(self.proxies)) * 1000
        return Result("serialization-floor", {"ms_per_proxy": round(per_proxy, 3)})

    def envoy_check(self, twins: dict[str, SyntheticProxy]) -> Result:
        """Each real Envoy's /config_dump against a synthetic client of the same node."""
        assert self.mesh is not None
        checks = {}
        for node, twin in twins.items():
            status, body = http_get(f"http://{self.mesh.layout.admin[node]}/config_dump?include_eds", timeout=10)
            dump = json.loads(body) if status == 200 else {}
            got: dict[str, set[str]] = {"cds": set(), "eds": set(), "lds": set(), "rds": set()}
            versions: dict[str, set[str]] = {"cds": set(), "lds": set()}
            for cfg in dump.get("configs", []):
                kind = cfg.get("@type", "").rpartition(".")[2]
                if kind == "ClustersConfigDump":  # version_info: the last CDS version Envoy accepted
                    versions["cds"].add(cfg.get("version_info", ""))
                    got["cds"].update(c["cluster"]["name"] for c in cfg.get("dynamic_active_clusters", []))
                elif kind == "ListenersConfigDump":
                    versions["lds"].add(cfg.get("version_info", ""))
                    got["lds"].update(lst["name"] for lst in cfg.get("dynamic_listeners", []) if "active_state" in lst)
                elif kind == "RoutesConfigDump":
                    got["rds"].update(r["route_config"]["name"] for r in cfg.get("dynamic_route_configs", []))
                elif kind == "EndpointsConfigDump":
                    got["eds"].update(e["endpoint_config"]["cluster_name"] for e in cfg.get("dynamic_endpoint_configs", []))
            want = {"cds": set(twin.types[CDS].resources), "eds": set(twin.types[EDS].resources),
                    "lds": set(twin.types[LDS].resources), "rds": set(twin.types[RDS].resources)}
            got["eds"] -= want["cds"] - want["eds"]  # static clusters' inline endpoints are in the dump too
            diff = {k: sorted(want[k] ^ got[k])[:5] for k in want if want[k] != got[k]}
            ver_ok = versions["cds"] <= {twin.types[CDS].version} and versions["lds"] <= {twin.types[LDS].version}
            checks[node] = {"match": not diff and ver_ok, "resources": {k: len(v) for k, v in got.items()},
                            "differences": diff, "versions_match": ver_ok}
        return Result("envoy-config-dump", {"envoys": len(twins), "all_match": all(c["match"] for c in checks.values()),
                                            "nodes": checks})

    # --- the run --------------------------------------------------------------------------------
    async def run_scenarios(self) -> None:
        a = self.args
        assert self.mesh is not None
        rss0, threads0 = rss_bytes(self.cp_pid), threads(self.cp_pid)
        secrets = str(self.state / "synthetic-secrets")
        for node in self.synthetic_nodes:
            self.proxies[node] = self.make_proxy(node, secrets)
        t0 = time.monotonic()
        for p in self.proxies.values():
            p.start()
        await self.wait_all(list(self.proxies.values()), "initial sync", a.timeout * 2)
        init = [(p.synced_at - t0) * 1000 for p in self.proxies.values()]
        used = {p.mode for p in self.proxies.values()}
        self.xds_used = "/".join(sorted(used))
        progress(f"{len(self.proxies)} synthetic proxies synced ({self.xds_used}) in {max(init):.0f} ms")
        self.results.append(Result("initial-sync", {"xds": self.xds_used}, latencies_ms=init))
        await self.quiet(1.0)
        await asyncio.sleep(1.0)
        rss1, threads1 = rss_bytes(self.cp_pid), threads(self.cp_pid)
        self.results.append(Result("footprint", {
            "cp_rss_mb_before_proxies": round(rss0 / 1e6, 1), "cp_rss_mb": round(rss1 / 1e6, 1),
            "cp_rss_mb_per_proxy": round((rss1 - rss0) / 1e6 / len(self.proxies), 3),
            "cp_threads_before_proxies": threads0, "cp_threads": threads1}))
        pids = {"control_plane": self.cp_pid}
        for proc in self.mesh.children:
            argv = [str(a) for a in proc.args]  # type: ignore[union-attr]
            pids[f"agent:{argv[argv.index('--node') + 1]}"] = proc.pid
        progress(f"idle CPU over {a.idle:.0f}s ...")
        cpu = await asyncio.to_thread(idle_cpu, pids, a.idle)
        agents = [v for k, v in cpu.items() if k.startswith("agent:")]
        self.results.append(Result("idle-cpu", {
            "seconds": a.idle, "cp_core_fraction": round(cpu["control_plane"], 4),
            "agent_core_fraction": round(max(agents), 4) if agents else None}))
        self.results.append(self.config_bytes())
        floor = self.serialization_floor()
        self.results.append(floor)
        popular = max(self.plan.popular, key=lambda s: len(self.connected_callers(s)))
        leafs = [s for s in self.plan.services if s not in self.plan.popular and self.connected_callers(s)]
        leaf = min(leafs, key=lambda s: (len(self.connected_callers(s)), s))
        progress(f"leaf service {leaf} ({len(self.connected_callers(leaf))} callers connected), popular {popular} "
                 f"({len(self.connected_callers(popular))})")
        scenarios: dict[str, Callable[[], Coroutine[Any, Any, Result]]] = {
            "leaf-instance": lambda: self.instance_scenario("leaf-instance", leaf, a.samples),
            "popular-instance": lambda: self.instance_scenario("popular-instance", popular, a.samples),
            "destination-rule": lambda: self.destination_rule(popular, a.samples),
            "mesh-wide-authz": lambda: self.mesh_wide_authz(a.samples),
            "nack-recover": lambda: self.nack_recover(popular),
            "sustained": lambda: self.sustained(popular, a.burst)}
        for name, make in scenarios.items():
            if name not in a.scenarios:
                continue
            progress(f"scenario {name}")
            res = await make()
            cpp = res.figures.get("cpu_ms_per_pushed_proxy")
            if cpp is not None and floor.figures["ms_per_proxy"]:
                res.figures["x_serialization_floor"] = round(cpp / floor.figures["ms_per_proxy"], 1)
            self.results.append(res)
        if "throughput" in a.scenarios:
            progress("scenario throughput")
            self.results.extend(await _scale_throughput.run(
                self, [float(r) for r in a.rates.split(",")], a.rate_seconds, a.timeout, a.behind_ms, progress))
        if self.envoy_nodes and "envoy-config-dump" in a.scenarios:
            twins = {}
            for node in self.envoy_nodes:
                self.identities[node] = await asyncio.to_thread(self.enroll, node)
                twins[node] = self.make_proxy(node, str(self.state / "nodes" / node / "secrets"))
                twins[node].start()
            await self.wait_all(list(twins.values()), "the real Envoys' twins", a.timeout)
            await self.quiet(1.0)
            progress("comparing each real Envoy's /config_dump with its synthetic twin")
            deadline = time.monotonic() + 30  # Envoy may still be warming a listener or fetching its routes
            while True:
                check = await asyncio.to_thread(self.envoy_check, twins)
                if check.figures["all_match"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            self.results.append(check)
            for t in twins.values():
                await t.stop()
        if "reconnect-storm" not in a.scenarios:
            return
        self.results.append(await self.reconnect_storm())
        # The streams the storm brought back are live: a change after it reaches every affected proxy.
        try:
            self.results.append(await self.instance_scenario("after-storm", popular, 2))
        except TimeoutError as exc:  # a finding, not a crash
            progress(f"  after-storm: {exc}")
            self.results.append(Result("after-storm", {"service": popular, "error": str(exc)}))

    async def stop_proxies(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.proxies.values()), return_exceptions=True)

    def close(self) -> None:
        if self.mesh is not None:
            self.mesh.shutdown()
        stop(self.consul_proc)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="a small mesh and few samples, under 2 minutes "
                   f"(defaults {SHORT}; full defaults {FULL})")
    p.add_argument("--proxies", type=int, help="synthetic ADS clients (one per node)")
    p.add_argument("--services", type=int)
    p.add_argument("--instances", type=int)
    p.add_argument("--nodes", type=int, help="nodes (default: the number of services)")
    p.add_argument("--samples", type=int, help="changes per convergence scenario")
    p.add_argument("--burst", type=int, help="instance changes in the sustained scenario (each way)")
    p.add_argument("--envoys", type=int, help="real agents with real Envoys (config_dump check, agent idle CPU)")
    p.add_argument("--idle", type=float, help="seconds over which idle CPU is measured")
    p.add_argument("--catalog", choices=("file", "consul"), default="file")
    p.add_argument("--xds", choices=("sotw", "delta", "auto"), default="auto")
    p.add_argument("--baseline", choices=("auto", "off"), default="auto",
                   help="auto: also run the leaf scenario with --full-rebuild when the control plane has it")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a change may take to reach every proxy")
    p.add_argument("--storm-timeout", type=float, default=60.0,
                   help="seconds the proxies may take to come back in sync after the control plane restarts")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated scenarios to run after the initial sync and footprint (default: all of {','.join(SCENARIOS)})")
    p.add_argument("--rates", help="throughput: changes per second, a rising ladder (comma-separated)")
    p.add_argument("--rate-seconds", type=float, help="throughput: seconds of changes at each rate")
    p.add_argument("--behind-ms", type=float, default=1000.0,
                   help="throughput: the engine falls behind when a rate's p99 (or its drain) exceeds this")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", type=Path, default=ARTIFACTS / "scale.json")
    args = p.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"--scenarios: unknown {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    args.scenarios = set(args.scenarios.split(","))
    defaults = SHORT if args.short else FULL
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.nodes is None:
        args.nodes = max(args.services, args.proxies + args.envoys)
    if args.proxies + args.envoys > args.nodes:
        p.error(f"--proxies {args.proxies} + {args.envoys} Envoys need as many nodes; give --nodes")
    return args


def print_table(rows: list[dict]) -> None:
    def f(v) -> str:
        return "-" if v is None else (f"{v:.0f}" if isinstance(v, float) else str(v))
    print(f"\n{'scenario':<20} {'proxies':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  other figures")
    skip = {"name", "proxies", "services", "instances", "p50_ms", "p99_ms", "max_ms", "load_average", "nodes"}
    for r in rows:
        other = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip and not isinstance(v, (dict, list)))
        print(f"{r['name']:<20} {r['proxies']:>7} {f(r['p50_ms']):>8} {f(r['p99_ms']):>8} {f(r['max_ms']):>8}  {other}")


def main(argv=None) -> int:
    args = parse_args(argv)
    progress(f"scale benchmark: {args.proxies} synthetic proxies + {args.envoys} Envoys, {args.services} services, "
             f"{args.instances} instances, {args.nodes} nodes, catalog={args.catalog}, xds={args.xds}; "
             f"load average {load_average()}")
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="meshcore-bench-scale-"))
    runs: list[tuple[str, list[Result], str]] = []
    bench = Bench(args, state)
    ok = False
    try:
        bench.start([])
        if bench.envoy_nodes:
            for node in bench.envoy_nodes:
                bench.mesh.start_agent(node)  # type: ignore[union-attr]
        bench.results.append(bench.enroll_all(bench.synthetic_nodes))
        asyncio.run(_run(bench))
        runs.append(("incremental" if bench.full_rebuild_flag else "current", bench.results, bench.xds_used))
        ok = True
    finally:
        bench.close()
        logs = ARTIFACTS / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        if (state / "logs").exists():
            shutil.copytree(state / "logs", logs)
        shutil.rmtree(state, ignore_errors=True)
        if not ok:
            print(f"scale benchmark failed; logs in {logs}", file=sys.stderr)
    if bench.full_rebuild_flag and args.baseline == "auto":
        runs.append(("full-rebuild", _baseline(args), bench.xds_used))
    base = {"proxies": args.proxies, "envoys": args.envoys, "services": args.services, "instances": args.instances,
            "nodes": args.nodes, "catalog": args.catalog}
    rows = [{**r.row(base), "control_plane": label, "xds": xds} for label, results, xds in runs for r in results]
    doc = {"benchmark": "scale", "short": args.short, "full_rebuild_flag": bench.full_rebuild_flag,
           "baseline": "--full-rebuild run" if bench.full_rebuild_flag else
           "no --full-rebuild flag: the current code is the full-rebuild path; ratios against the serialization floor",
           "load_average_end": load_average(), "wall_s": round(time.monotonic() - started, 1), "scenarios": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(rows)
    print(f"\nwrote {args.output} ({doc['wall_s']}s; load average {doc['load_average_end']})")
    return 0


async def _run(bench: Bench) -> None:
    try:
        await bench.run_scenarios()
    finally:
        await bench.stop_proxies()


def _baseline(args: argparse.Namespace) -> list[Result]:
    """The same mesh against ``--full-rebuild``: initial sync and the leaf and popular instance changes."""
    progress("baseline: the control plane with --full-rebuild")
    state = Path(tempfile.mkdtemp(prefix="meshcore-bench-scale-base-"))
    b_args = argparse.Namespace(**{**vars(args), "envoys": 0})
    bench = Bench(b_args, state)
    try:
        bench.start(["--full-rebuild"])
        bench.results.append(bench.enroll_all(bench.synthetic_nodes))

        async def go() -> None:
            try:
                secrets = str(state / "synthetic-secrets")
                for node in bench.synthetic_nodes:
                    bench.proxies[node] = bench.make_proxy(node, secrets)
                t0 = time.monotonic()
                for p in bench.proxies.values():
                    p.start()
                await bench.wait_all(list(bench.proxies.values()), "initial sync", args.timeout * 2)
                bench.results.append(Result("initial-sync", {}, [(p.synced_at - t0) * 1000 for p in bench.proxies.values()]))
                await bench.quiet(1.0)
                popular = max(bench.plan.popular, key=lambda s: len(bench.connected_callers(s)))
                leafs = [s for s in bench.plan.services if s not in bench.plan.popular and bench.connected_callers(s)]
                leaf = min(leafs, key=lambda s: (len(bench.connected_callers(s)), s))
                bench.results.append(await bench.instance_scenario("leaf-instance", leaf, args.samples))
                bench.results.append(await bench.instance_scenario("popular-instance", popular, args.samples))
            finally:
                await bench.stop_proxies()
        asyncio.run(go())
    finally:
        bench.close()
        shutil.rmtree(state, ignore_errors=True)
    return bench.results


if __name__ == "__main__":
    sys.exit(main())
