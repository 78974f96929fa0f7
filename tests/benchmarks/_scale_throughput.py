"""The throughput scenario of the scale benchmark: a stream of changes at rising rates, until the engine falls behind.

At each rate of a ladder (``--rates``), for ``--rate-seconds``, changes are written on a fixed schedule: instance
adds and removals of leaf services (the file source or the Consul double) and, one change in five, a
DestinationRule (connection pool) on a leaf service through the operator API. Each change touches its own
service, so the proxies it reaches (the service's callers, and the instance's host for an instance change) are
mostly different from the next change's: coalescing may fold changes into one rebuild, but the proxies' updates
do not fold into one another the way a burst on one popular service does (``sustained``). A service is touched
again only once its previous change has reached every proxy it affects; when no service is free, the change is
skipped (counted: the writer could not keep its rate because changes were still in flight).

Per rate, over the window from the first write until the last change had reached its last proxy:

* ``written_per_s``: changes written per second of the writing window (the rate achieved);
* ``absorbed_per_s``: changes that reached all their proxies, per second of the whole window;
* ``updates_per_s``: responses the proxies ACKed per second (one proxy taking one new config of one type is one);
* ``p50_ms``/``p99_ms``/``max_ms``: latency from each change's write to the ACK of each proxy it affects;
* coalescing: snapshots the control plane made, changes per snapshot, builds, re-assemblies, plugin re-runs and
  pushes (its ``/metrics``), and the control plane's and this process's CPU (a core fraction each: the synthetic
  proxies share the machine);
* ``behind``: why the engine fell behind at this rate ("" when it kept up): the p99 over ``--behind-ms``, the last
  change landing over ``--behind-ms`` after the last write, the writer short of its rate (changes skipped, or
  written late: ``write_ms_*`` are this process's own writes), or a change that never arrived. The ladder stops
  after the first rate that falls behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from meshcore import naming

from . import _scale_mesh as meshgen
from ._scale_procs import cpu_seconds

if TYPE_CHECKING:
    from .bench_scale import Bench, Result

COUNTERS = {
    "snapshots": "meshcore_snapshot_update_seconds_count",
    "coalesced_sum": "meshcore_coalesced_changes_sum",
    "builds": "meshcore_proxy_builds_total",
    "reassemblies": "meshcore_proxy_reassemblies_total",
    "policy_reruns": "meshcore_proxy_policy_reruns_total",
    "pushes": "meshcore_proxy_pushes_total",
}
DR_EVERY = 5  # one change in five is a DestinationRule


def control_plane_counters(bench: "Bench") -> dict[str, float]:
    """The engine's counters from the control plane's ``/metrics`` (operator API)."""
    import urllib.request

    assert bench.mesh is not None
    req = urllib.request.Request(bench.mesh.cp_info["http"] + "/metrics", headers=bench.mesh.auth_headers())
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    wanted = set(COUNTERS.values())
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and not sample.labels:
                found[sample.name] = sample.value
    return {k: found.get(v, 0.0) for k, v in COUNTERS.items()}


@dataclass
class _Change:
    service: str
    kind: str  # "add", "remove" or "dr"
    written_at: float = 0.0
    futures: list[asyncio.Future] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the proxy of each future


@dataclass
class _Step:
    rate: float
    seconds: float
    written: list[_Change] = field(default_factory=list)
    skipped: int = 0
    write_ms: list[float] = field(default_factory=list)  # each file write or registration (not the API's applies)
    write_errors: int = 0
    last_error: str = ""


class Throughput:
    def __init__(self, bench: "Bench", *, behind_ms: float, max_callers: int = 8):
        self.bench = bench
        self.behind_ms = behind_ms
        proxies = set(bench.proxies)
        plan = bench.plan
        # The callers each service has now: the instances this scenario adds (and removes) call their service's
        # upstreams too, but a change is watched only at proxies whose call to it outlives the other changes.
        self.callers = {s: plan.nodes_calling(s) & proxies for s in plan.services if s not in plan.popular}
        self.services = [s for s, callers in self.callers.items() if 0 < len(callers) <= max_callers]
        self.hosts = sorted(proxies)
        self._next = 0
        self._busy: dict[str, _Change] = {}
        self._added: dict[str, meshgen.Instance] = {}  # service -> the bench instance it has now
        self._dr_value = 5000
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="bench-throughput")

    def close(self) -> None:
        for inst in list(self._added.values()):
            self.bench.changes.remove(inst)
        self._added.clear()
        self._pool.shutdown(wait=True)

    # --- one change ---------------------------------------------------------------------------
    def _free_service(self) -> str | None:
        for _ in range(len(self.services)):
            service = self.services[self._next % len(self.services)]
            self._next += 1
            busy = self._busy.get(service)
            if busy is None or all(f.done() for f in busy.futures):
                return service
        return None

    def _watch(self, change: _Change, nodes: set[str], pred: Callable[[Any], bool]) -> None:
        for n in sorted(nodes):
            change.futures.append(self.bench.proxies[n].watch(pred))
            change.nodes.append(n)

    def _make(self, n: int, service: str) -> tuple[_Change, Callable[[], None]]:
        """The change number ``n`` on ``service``: what to watch (registered now) and the write to make."""
        bench = self.bench
        callers = self.callers[service]
        if n % DR_EVERY == DR_EVERY - 1:
            self._dr_value += 1
            value = self._dr_value
            change = _Change(service, "dr")
            self._watch(change, callers, bench.max_connections(service, value))
            return change, lambda: bench.apply(f"bench-tp-{service}.yaml", meshgen.destination_rule(service, value))
        inst = self._added.pop(service, None)
        if inst is None:
            host = self.hosts[n % len(self.hosts)]
            inst = bench.changes.new_instance(service, host)
            self._added[service] = inst
            present, write = True, bench.changes.add
        else:
            present, write = False, bench.changes.remove
        change = _Change(service, "add" if present else "remove")
        addr = bench.plan.nodes[inst.node]
        self._watch(change, callers, bench.has_endpoint(service, addr, inst.mesh_port, present))
        if inst.node in bench.proxies:
            self._watch(change, {inst.node}, bench.has_listener(naming.inbound_listener(inst.id), present))
        return change, lambda inst=inst: write(inst)

    # --- one rate -----------------------------------------------------------------------------
    async def _write(self, step: _Step) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / step.rate
        start = time.monotonic()
        n = 0
        pending: list[asyncio.Future] = []
        while True:
            due = start + n * interval
            if due - start >= step.seconds:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            service = self._free_service()
            n += 1
            if service is None:
                step.skipped += 1
                continue
            change, write = self._make(n, service)
            self._busy[service] = change
            change.written_at = time.monotonic()
            step.written.append(change)
            if change.kind == "dr":  # an HTTP round trip to the operator API: off the loop
                pending.append(loop.run_in_executor(self._pool, write))
            else:  # a file write (or a Consul double registration): quick, in order with its watches
                try:
                    write()
                except Exception as exc:  # noqa: BLE001 - a failed write is counted, the step goes on
                    step.write_errors += 1
                    step.last_error = f"{type(exc).__name__}: {exc}"
                step.write_ms.append((time.monotonic() - change.written_at) * 1000)
        for fut in pending:
            try:
                await fut
            except Exception as exc:  # noqa: BLE001
                step.write_errors += 1
                step.last_error = f"{type(exc).__name__}: {exc}"

    async def step(self, rate: float, seconds: float, timeout: float) -> "Result":
        from .bench_scale import Result, pct

        bench = self.bench
        step = _Step(rate, seconds)
        counters0 = await asyncio.to_thread(control_plane_counters, bench)
        acks0 = sum(p.stats.acks for p in bench.proxies.values())
        cpu0, own0 = cpu_seconds(bench.cp_pid), time.process_time()
        t0 = time.monotonic()
        await self._write(step)
        written_s = time.monotonic() - t0
        futures = [f for c in step.written for f in c.futures]
        _, unfinished = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
        for f in unfinished:
            f.cancel()
        landed = [c for c in step.written if all(f.done() and not f.cancelled() for f in c.futures)]
        stuck = [f"{c.kind} {c.service} ({sum(f.cancelled() for f in c.futures)} of {len(c.futures)} proxies: "
                 f"{', '.join(n for n, f in zip(c.nodes, c.futures) if f.cancelled())})"
                 for c in step.written if c not in landed]
        last = max((f.result() for c in landed for f in c.futures), default=t0)
        window = max(last, t0 + written_s) - t0
        acks = sum(p.stats.acks for p in bench.proxies.values()) - acks0
        cpu, own = cpu_seconds(bench.cp_pid) - cpu0, time.process_time() - own0
        await bench.quiet(0.7)
        counters = await asyncio.to_thread(control_plane_counters, bench)
        delta = {k: counters[k] - counters0[k] for k in counters}
        lat = [(f.result() - c.written_at) * 1000 for c in landed for f in c.futures]
        per_change = [max((f.result() - c.written_at) * 1000 for f in c.futures) for c in landed if c.futures]
        drain_ms = (last - (t0 + written_s)) * 1000 if landed else 0.0
        behind = []
        if unfinished:
            behind.append(f"{len(step.written) - len(landed)} changes had not reached all their proxies after {timeout:.0f}s")
        if lat and pct(lat, 0.99) > self.behind_ms:
            behind.append(f"p99 {pct(lat, 0.99):.0f} ms > {self.behind_ms:.0f} ms")
        if drain_ms > self.behind_ms:
            behind.append(f"the last change landed {drain_ms:.0f} ms after the last write")
        if len(step.written) < 0.9 * rate * seconds:
            behind.append(f"wrote {len(step.written)} of {rate * seconds:.0f} changes "
                          f"({step.skipped} skipped: their service's previous change still in flight)")
        elif written_s > 1.1 * seconds + 0.1:
            behind.append(f"the writer took {written_s:.1f} s for {seconds:g} s of changes (this process or its "
                          f"writes were slow: write p99 {pct(step.write_ms, 0.99):.0f} ms)")
        if step.write_errors:
            behind.append(f"{step.write_errors} writes failed (last: {step.last_error})")
        snapshots = delta["snapshots"]
        figures: dict[str, Any] = {
            "rate_offered": rate, "seconds": seconds, "written": len(step.written), "skipped": step.skipped,
            "written_per_s": round(len(step.written) / written_s, 1) if written_s else None,
            "kinds": {k: sum(c.kind == k for c in step.written) for k in ("add", "remove", "dr")},
            "absorbed": len(landed), "absorbed_per_s": round(len(landed) / window, 1) if window else None,
            "window_s": round(window, 2), "drain_ms": round(drain_ms, 1),
            "write_ms_median": round(pct(step.write_ms, 0.5), 2) if step.write_ms else None,
            "write_ms_p99": round(pct(step.write_ms, 0.99), 2) if step.write_ms else None,
            "acked_updates": acks, "updates_per_s": round(acks / window, 1) if window else None,
            "proxies_per_change": round(sum(len(c.futures) for c in step.written) / max(1, len(step.written)), 2),
            "change_p50_ms": round(pct(per_change, 0.5), 1) if per_change else None,
            "change_p99_ms": round(pct(per_change, 0.99), 1) if per_change else None,
            "snapshots": int(snapshots),
            "changes_per_snapshot": round(len(step.written) / snapshots, 2) if snapshots else None,
            "source_updates_per_snapshot": round(delta["coalesced_sum"] / snapshots, 2) if snapshots else None,
            "builds": int(delta["builds"]), "reassemblies": int(delta["reassemblies"]),
            "policy_reruns": int(delta["policy_reruns"]), "pushes": int(delta["pushes"]),
            "cp_cpu_s": round(cpu, 2), "cp_core_fraction": round(cpu / window, 2) if window else None,
            "bench_core_fraction": round(own / window, 2) if window else None,
            "cp_cpu_ms_per_change": round(cpu * 1000 / max(1, len(step.written)), 2),
            "behind": "; ".join(behind),
            **({"stuck": stuck[:10]} if stuck else {}),
        }
        return Result(f"throughput-{rate:g}", figures, latencies_ms=lat)


async def run(bench: "Bench", rates: list[float], seconds: float, timeout: float, behind_ms: float,
              progress: Callable[[str], None]) -> list["Result"]:
    """The ladder: one result per rate, up to and including the first rate at which the engine fell behind."""
    tp = Throughput(bench, behind_ms=behind_ms)
    results = []
    try:
        progress(f"  throughput: {len(tp.services)} leaf services to change, rates {rates}/s, {seconds:g} s each")
        for rate in rates:
            r = await tp.step(rate, seconds, timeout)
            f = r.figures
            progress(f"  throughput {rate:g}/s: wrote {f['written']} ({f['written_per_s']}/s), absorbed "
                     f"{f['absorbed_per_s']}/s, {f['updates_per_s']} proxy updates/s, {f['snapshots']} snapshots "
                     f"({f['changes_per_snapshot']} changes each), CP {f['cp_core_fraction']} core, "
                     f"bench {f['bench_core_fraction']} core; {f['behind'] or 'kept up'}"
                     + (f"; stuck: {f['stuck']}" if "stuck" in f else ""))
            results.append(r)
            await bench.quiet(1.0)
            if f["behind"]:
                break
    finally:
        await asyncio.to_thread(tp.close)
        await bench.quiet(1.0)
    return results
