"""The collector's cost per scrape: parsing one proxy's stats and computing one round's signals (prints figures).

Issue 11 (idle control plane CPU): the collector parses every proxy's ``/stats/prometheus`` every interval.
The text is real Envoy 1.40 output (``data/envoy-1.40-per-endpoint-stats.prom``: one outbound cluster with
two endpoints, per-endpoint stats on, one outbound HTTP listener) with that cluster and listener repeated
``--clusters`` times per proxy and the endpoint lines ``--endpoints`` times per cluster, so the figures
count everything a VM's Envoy exposes that the collector has to skip. ``--no-endpoint-stats`` drops the
per-endpoint lines (an Envoy whose clusters do not set ``track_cluster_stats.per_endpoint_stats``).

Times are this process's CPU time (the machine may be loaded), the best of 10.

    .venv/bin/python -m tests.observe.bench_collector [--proxies 50] [--clusters 20] [--endpoints 3]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from meshcore.observe._proxy_stats import parse_proxy_stats
from meshcore.observe.collector import Scrape, ScrapeTarget, signals_from_scrapes

TEMPLATE = Path(__file__).parent / "data" / "envoy-1.40-per-endpoint-stats.prom"
CLUSTER, LISTENER = "outbound_x|web", "outbound_x_80"
ENDPOINT, OTHER_ENDPOINT = "127.0.0.1:19921", "127.0.0.1:19922"
_NUMBER = re.compile(r"} (\d+)$")


def proxy_text(clusters: int, endpoints: int, endpoint_stats: bool = True, bump: int = 0) -> str:
    """One proxy's stats: the template's cluster/listener lines once per upstream ``svc<i>``, its endpoint
    lines once per endpoint; ``bump`` is added to every sample of those (a later scrape)."""
    out: list[str] = []
    for line in TEMPLATE.read_text().splitlines():
        if OTHER_ENDPOINT in line:
            continue
        if ENDPOINT in line:
            if not endpoint_stats:
                continue
            for i in range(clusters):
                for j in range(endpoints):
                    out.append(_bumped(line.replace(CLUSTER, f"outbound_svc{i}|web")
                                       .replace(ENDPOINT, f"10.{i // 250}.{i % 250}.{j + 1}:8443"), bump))
        elif CLUSTER in line or LISTENER in line:
            for i in range(clusters):
                out.append(_bumped(line.replace(CLUSTER, f"outbound_svc{i}|web").replace(LISTENER, f"outbound_svc{i}_80"),
                                   bump))
        elif endpoint_stats or "envoy_cluster_endpoint_" not in line:
            out.append(line)
    return "\n".join(out) + "\n"


def _bumped(line: str, bump: int) -> str:
    return _NUMBER.sub(lambda m: "} " + str(int(m[1]) + bump), line) if bump and not line.startswith("#") else line


def measure(proxies: int, clusters: int, endpoints: int, endpoint_stats: bool, rounds: int = 10) -> dict[str, float]:
    before, after = (proxy_text(clusters, endpoints, endpoint_stats, bump) for bump in (0, 7))
    targets = [ScrapeTarget(f"n{k}", instances=((f"web-n{k}", "web"),)) for k in range(proxies)]
    parse_ms = []
    for _ in range(rounds):
        started = time.process_time()
        parse_proxy_stats(after)
        parse_ms.append((time.process_time() - started) * 1000)
    prev = {t.node: Scrape(parse_proxy_stats(before), 0.0) for t in targets}
    cur = {t.node: Scrape(parse_proxy_stats(after), 5.0) for t in targets}
    signal_ms = []
    for _ in range(rounds):
        started = time.process_time()
        signals_from_scrapes(prev, cur, targets, at=5.0)
        signal_ms.append((time.process_time() - started) * 1000)
    return {"lines": after.count("\n"), "bytes": len(after), "parse_ms": min(parse_ms),
            "signals_ms": min(signal_ms), "round_cpu_ms": min(parse_ms) * proxies + min(signal_ms)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxies", type=int, default=50)
    p.add_argument("--clusters", type=int, default=20, help="outbound clusters per proxy")
    p.add_argument("--endpoints", type=int, default=3, help="endpoints per cluster")
    p.add_argument("--no-endpoint-stats", action="store_true", help="leave out the per-endpoint lines")
    args = p.parse_args(argv)
    r = measure(args.proxies, args.clusters, args.endpoints, not args.no_endpoint_stats)
    print(f"proxies={args.proxies} clusters={args.clusters} endpoints={args.endpoints} "
          f"endpoint_stats={not args.no_endpoint_stats}: {r['lines']} lines ({r['bytes'] / 1024:.0f} KiB) per proxy; "
          f"parse {r['parse_ms']:.2f} ms per scrape; signals {r['signals_ms']:.2f} ms per round; "
          f"one round {r['round_cpu_ms']:.0f} ms of CPU")


if __name__ == "__main__":
    main()
