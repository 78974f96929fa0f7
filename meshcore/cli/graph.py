"""``meshctl graph``: which service calls which, how often, how often it fails, how slow (p99).

By default it reads the last ``--window`` (1m) of the control plane's metrics collector
(``/v1/dashboard/series`` and ``/v1/dashboard/summary``; :func:`meshcore.observe.graph.edges_over_window`),
so it works from any machine that reaches the operator API and shows traffic that already happened.
``--by version`` splits every service into its versions (the collector's ``version_edge_*`` signals: the
instance that answered, from the caller's per-endpoint stats). Every edge names its source and destination
datacenter and, when it crossed datacenters, the mesh gateways it went through with their own connection
figures (``gateway_connection_*``). ``--direct`` reads the proxies' Envoy admin addresses (``/v1/proxies``)
and scrapes every Envoy's ``/stats/prometheus`` twice, ``--window`` apart, from this machine (per service
only). It prints a table, JSON or YAML (a list of ``source``, ``destination``, ``rps``, ``error_rate``,
``p99_ms``, ``requests``, ``idle``, ``source_datacenter``, ``destination_datacenter``,
``crosses_datacenters``, ``gateways``; ``source_version`` and ``destination_version`` with ``--by version``,
``paths`` per datacenter and gateway without) or Graphviz DOT. Wire it into meshctl with
``register(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import ApiError, MeshError
from ..observe.collector import fetch_text
from ..observe.graph import (Edge, EnvoyStats, GatewayView, compute_edges, edges_over_window, parse_envoy_prometheus,
                             version_edges_over_window, with_datacenters)
from ..observe.signals import SIGNAL_LABELS
from ._client import Client, discover_server
from ._run import dispatch
from ._commands import HELP
from ._types import MeshctlParser, http_url, seconds

GRAPH_OUTPUTS = ("table", "json", "yaml", "dot")
GRAPH_BY = ("service", "version")
MESH_GATEWAY = "mesh-gateway"
SCRAPE_TIMEOUT_S = 3.0


def scrape(admin: str, timeout: float = SCRAPE_TIMEOUT_S) -> EnvoyStats:
    """One Envoy's outbound stats from its admin ``/stats/prometheus``; MeshError when it cannot answer."""
    url = f"http://{admin}/stats/prometheus"
    try:
        text = fetch_text(url, timeout)  # no redirects followed
    except MeshError as exc:
        raise MeshError(f"cannot scrape Envoy stats at {url} ({exc}); "
                        "is the proxy running and its admin address reachable from here?") from exc
    return parse_envoy_prometheus(text)


def collect(admins: dict[str, str], window: float) -> tuple[list[Edge], dict[str, str]]:
    """Edges over ``window`` seconds from the Envoys ``{node: admin}``; also ``{node: error}`` of skipped ones."""
    errors: dict[str, str] = {}

    def scrape_all() -> dict[str, tuple[EnvoyStats, float]]:
        def one(item):
            node, admin = item
            try:
                return node, (scrape(admin), time.monotonic())
            except MeshError as exc:
                errors[node] = str(exc)
                return node, None
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(admins)))) as pool:
            return {n: r for n, r in pool.map(one, admins.items()) if r is not None}

    first = scrape_all()
    time.sleep(window)
    second = scrape_all()
    scrapes = {n: (first[n][0], second[n][0], second[n][1] - first[n][1]) for n in first if n in second}
    return compute_edges(scrapes), errors


def _versioned(name: str, version: str) -> str:
    return f"{name} {version}" if version else name


def _datacenters(e: Edge) -> str:
    if not e.source_datacenter and not e.destination_datacenter:
        return "-"
    if e.source_datacenter == e.destination_datacenter:
        return e.source_datacenter
    return f"{e.source_datacenter or '?'}->{e.destination_datacenter or '?'}"


def _via(e: Edge) -> str:
    hops = []
    for g in e.gateways:
        figures = [] if g.bytes_per_second is None else [_bytes(g.bytes_per_second)]
        if g.connections_per_second is not None:
            figures.append(f"{g.connections_per_second:.2f} cx/s")
        if g.connection_error_rate:
            figures.append(f"{g.connection_error_rate * 100:.1f}% failed")
        hops.append(g.node + (f" ({', '.join(figures)})" if figures else ""))
    return " -> ".join(hops) or "-"


def _bytes(rate: float) -> str:
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if rate >= size:
            return f"{rate / size:.1f} {unit}"
    return f"{rate:.0f} B/s"


def render_table(edges: list[Edge], by: str = "service") -> str:
    rows: list[tuple[str, ...]]
    if by == "version":
        rows = [("SOURCE", "VERSION", "DESTINATION", "VERSION", "RPS", "ERRORS", "P99", "DATACENTERS", "VIA")]
    else:
        rows = [("SOURCE", "DESTINATION", "RPS", "ERRORS", "P99", "DATACENTERS", "VIA")]
    for e in edges:
        figures = (f"{e.rps:.2f}" if e.rps else "idle", f"{e.error_rate * 100:.1f}%",
                   "-" if e.p99_ms is None else f"{e.p99_ms:.1f}ms", _datacenters(e), _via(e))
        if by == "version":
            rows.append((e.source, e.source_version or "-", e.destination, e.destination_version or "-", *figures))
        else:
            rows.append((e.source, e.destination, *figures))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_dot(edges: list[Edge]) -> str:
    lines = ["digraph mesh {", "  rankdir=LR;", '  node [shape=box, style=rounded];']
    for e in edges:
        p99 = "-" if e.p99_ms is None else f"{e.p99_ms:.1f}ms"
        color = "red" if e.error_rate >= 0.05 else ("gray" if e.rps == 0 else "black")
        label = f"{e.rps:.2f} rps\\n{e.error_rate * 100:.1f}% err\\np99 {p99}"
        if e.crosses_datacenters:
            label += f"\\n{_datacenters(e)} via {' -> '.join(g.node for g in e.gateways) or 'direct'}"
        src, dst = _versioned(e.source, e.source_version), _versioned(e.destination, e.destination_version)
        lines.append(f'  "{src}" -> "{dst}" [label="{label}", color={color}];')
    lines.append("}")
    return "\n".join(lines)


def _history(client: Client, signal: str, window: float) -> tuple[dict[tuple[str, ...], list[tuple[float, float]]],
                                                                 set[float]]:
    data = client.get(f"/v1/dashboard/series?signal={signal}&since={window:g}")
    names = SIGNAL_LABELS[signal]
    out: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    times: set[float] = set()
    for series in data.get("series", ()):
        labels = series.get("labels", {})
        points = [(float(t), float(v)) for t, v in series.get("points", ())]
        out[tuple(labels.get(n, "") for n in names)] = points
        times.update(t for t, _ in points)
    return out, times


def _newer_history(client: Client, signal: str, window: float) -> tuple[dict[tuple[str, ...], list[tuple[float, float]]],
                                                                       set[float]]:
    """:func:`_history` of a signal an older control plane may not have: none from one that does not."""
    try:
        return _history(client, signal, window)
    except ApiError as exc:
        if exc.status == 400 and signal in str(exc):
            return {}, set()
        raise


def from_collector(client: Client, window: float, by: str = "service") -> tuple[list[Edge], dict[str, str]]:
    """Edges over the last ``window`` seconds from the control plane's collector (``/v1/dashboard/series``):
    works from any machine that reaches the operator API, no Envoy admin address needed. ``by``: ``service``
    (one edge per pair of services, with its datacenters, gateways and paths) or ``version``. Also
    ``{node: error}`` of the proxies the collector could not read."""
    collector = client.get("/v1/dashboard/summary").get("collector", {})
    interval = float(collector.get("interval_seconds") or 5.0)
    history = float(collector.get("history_seconds") or 0.0)
    if history and window > history:
        raise MeshError(f"--window {window:g}s is longer than the control plane keeps ({history:g}s); "
                        f"use at most --window {history:g}s")
    cx, cx_times = _newer_history(client, "gateway_connection_rate", window)
    cx_failed, _ = _newer_history(client, "gateway_connection_error_rate", window)
    carried, _ = _newer_history(client, "gateway_bytes_rate", window)
    where = {p.node: g.datacenter for p in client.proxies() for g in p.gateways if g.kind == MESH_GATEWAY}
    gateways = GatewayView.over_window(cx, cx_failed, sorted(cx_times), interval, where, carried)
    try:
        v_rates, v_times = _history(client, "version_edge_request_rate", window)
    except ApiError as exc:
        if exc.status != 400:
            raise
        if by == "version":
            raise MeshError(f"the control plane at {client.server} does not split the graph by version (an earlier "
                            "meshcore); upgrade it, or leave out --by version") from exc
        v_rates, v_times = {}, set()
    v_errors, _ = _newer_history(client, "version_edge_error_rate", window)
    v_p99s, _ = _newer_history(client, "version_edge_p99_ms", window) if by == "version" else ({}, set())
    versioned = version_edges_over_window(v_rates, v_errors, v_p99s, sorted(v_times), interval, gateways)
    errors = dict(collector.get("errors") or {})
    if by == "version":
        return versioned, errors
    rates, times = _history(client, "edge_request_rate", window)
    failed, _ = _history(client, "edge_error_rate", window)
    p99s, _ = _history(client, "edge_p99_ms", window)
    return with_datacenters(edges_over_window(rates, failed, p99s, sorted(times), interval), versioned), errors


def cmd_graph(args) -> int:
    window = args.window  # seconds, checked by argparse (_types.seconds)
    client = Client(discover_server(args.server), token=getattr(args, "token", None))
    by = getattr(args, "by", "service")
    if args.direct and by == "version":
        raise MeshError("--by version reads the control plane's collector (it knows which version answered); "
                        "leave out --direct")
    if args.direct:
        admins = {p.node: p.admin for p in client.proxies() if p.admin and p.connected}
        if not admins:
            raise MeshError("no connected proxy reports an Envoy admin address; see `meshctl status`")
        edges, errors = collect(admins, window)
    else:
        edges, errors = from_collector(client, window, by)
    for node, err in sorted(errors.items()):
        print(f"meshctl graph: no metrics from node={node}: {err}", file=sys.stderr)
    rows = [{**e.to_dict(versions=by == "version"), "idle": e.rps == 0} for e in edges]
    if args.graph_output == "json":
        print(json.dumps(rows, indent=2))
    elif args.graph_output == "yaml":
        import yaml

        print(yaml.safe_dump(rows, sort_keys=False), end="")
    elif args.graph_output == "dot":
        print(render_dot(edges))
    else:
        print(render_table(edges, by))
    return 0


def register(subparsers, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``graph``. It has its own ``-o`` (table, json, yaml, dot), so it does not inherit ``common``'s."""
    desc = ("The service graph from the control plane's metrics collector: every edge source -> destination "
            "with its request rate, error ratio (5xx) and p99 latency over the last --window; declared edges "
            "without traffic are shown idle. Each edge names its source and destination datacenter and, when "
            "it crossed datacenters, the mesh gateways it went through (with their connections per second). "
            "--by version splits each service into its versions (the instance's version label): who called "
            "which version. --direct scrapes every Envoy's admin address from this machine twice, --window "
            "apart, instead (per service only).")
    sp = subparsers.add_parser("graph", help=HELP["graph"], description=desc)
    sp.add_argument("--server", type=http_url, help="control plane HTTP API URL (default: $MESHCORE_SERVER, the demo in "
                                     "./.meshcore-demo, then http://127.0.0.1:15000)")
    sp.add_argument("--token", default=None, help="operator token (default: discovered as for other commands)")
    sp.add_argument("-o", "--output", dest="graph_output", choices=GRAPH_OUTPUTS, default="table",
                    help="output format")
    sp.add_argument("--window", default="1m", type=seconds(low=0.001, high=7 * 86400),
                    help="how far back to look (default %(default)s); with --direct, the time between the scrapes")
    sp.add_argument("--by", choices=GRAPH_BY, default="service",
                    help="one node per service (default) or per version of each service (its 'version' label)")
    sp.add_argument("--direct", action="store_true",
                    help="scrape the Envoys' admin addresses from this machine instead of asking the control plane")
    sp.set_defaults(fn=cmd_graph, output="table")


def main(argv=None) -> int:
    p = MeshctlParser(prog="meshctl")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["graph", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
