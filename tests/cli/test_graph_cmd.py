"""`meshctl graph` argument parsing and rendering, and `--by version` / datacenters against a real control plane
whose collector reads synthetic Envoy stats (real Envoys: tests/cli/test_mesh_cli_e2e.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import pytest

from meshcore.cli.graph import register, render_dot, render_table
from meshcore.cli.main import main
from meshcore.observe.graph import Edge, GatewayHop

EDGES = [Edge("reviews", "ratings", 12.3, 1.0, 4.5, 40), Edge("productpage", "details", 0.0, 0.0, None, 0)]


def test_register_adds_graph_with_its_own_output_choices():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = p.parse_args(["graph", "-o", "dot", "--window", "2s", "--server", "http://127.0.0.1:1"])
    assert (args.graph_output, args.window, args.server) == ("dot", 2.0, "http://127.0.0.1:1")  # seconds, parsed
    assert p.parse_args(["graph"]).graph_output == "table"


def test_table_and_dot_show_rate_errors_and_p99():
    table = render_table(EDGES).splitlines()
    assert table[0].split() == ["SOURCE", "DESTINATION", "RPS", "ERRORS", "P99", "DATACENTERS", "VIA"]
    assert table[1].split() == ["reviews", "ratings", "12.30", "100.0%", "4.5ms", "-", "-"]
    assert table[2].split() == ["productpage", "details", "idle", "0.0%", "-", "-", "-"]
    dot = render_dot(EDGES)
    assert dot.startswith("digraph mesh {") and dot.endswith("}")
    assert '"reviews" -> "ratings" [label="12.30 rps\\n100.0% err\\np99 4.5ms", color=red];' in dot


def test_edges_over_window_weights_by_interval_and_lists_idle_edges():
    from meshcore.observe.graph import edges_over_window

    times = [100.0, 102.0, 103.0]  # the first rate covers one interval (1s), then 2s, then 1s
    rates = {("a", "b"): [(100.0, 10.0), (102.0, 5.0)], ("a", "c"): [(100.0, 0.0), (103.0, 0.0)]}
    errors = {("a", "b"): [(100.0, 0.5), (102.0, 0.0)]}
    p99s = {("a", "b"): [(100.0, 30.0), (102.0, 12.0)]}
    ab, ac = edges_over_window(rates, errors, p99s, times, interval=1.0)
    assert (ab.source, ab.destination, ab.requests) == ("a", "b", 20)  # 10*1 + 5*2
    assert ab.rps == 20 / 4 and ab.error_rate == 5 / 20 and ab.p99_ms == 30.0
    assert (ac.destination, ac.rps, ac.requests, ac.p99_ms) == ("c", 0.0, 0, None)


CROSSING = Edge("web", "store", 2.0, 0.0, 8.0, 120, "v1", "v3", "dc1", "dc2",
                (GatewayHop("gw1", "dc1", 0.25, 0.0, 2500.0), GatewayHop("gw2", "dc2")))


def test_version_table_and_dot_name_versions_datacenters_and_gateways():
    table = render_table([CROSSING, Edge("web", "api", 0.0, 0.0, None, 0, "v1", "", "dc1", "dc1")], by="version")
    rows = [r.split("  ") for r in table.splitlines()]
    assert [c.strip() for c in rows[0] if c.strip()] == ["SOURCE", "VERSION", "DESTINATION", "VERSION", "RPS", "ERRORS",
                                                         "P99", "DATACENTERS", "VIA"]
    row = table.splitlines()[1].split(None, 7)
    assert row[:7] == ["web", "v1", "store", "v3", "2.00", "0.0%", "8.0ms"]
    assert row[7].split(None, 1) == ["dc1->dc2", "gw1 (2.5 kB/s, 0.25 cx/s) -> gw2"]
    assert table.splitlines()[2].split() == ["web", "v1", "api", "-", "idle", "0.0%", "-", "dc1", "-"]
    dot = render_dot([CROSSING])
    assert '"web v1" -> "store v3"' in dot and "dc1->dc2 via gw1 -> gw2" in dot
    assert CROSSING.to_dict(versions=True)["gateways"] == [
        {"node": "gw1", "datacenter": "dc1", "connections_per_second": 0.25, "connection_error_rate": 0.0,
         "bytes_per_second": 2500.0},
        {"node": "gw2", "datacenter": "dc2", "connections_per_second": None, "connection_error_rate": None,
         "bytes_per_second": None}]
    assert CROSSING.crosses_datacenters and not EDGES[0].crosses_datacenters


def test_help_names_by_and_direct_refuses_versions(capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        main(["graph", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--by {service,version}" in out and "gateways" in out
    monkeypatch.setenv("MESHCORE_TOKEN", "x")
    assert main(["graph", "--by", "version", "--direct", "--server", "http://127.0.0.1:1"]) != 0
    assert "leave out --direct" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "--by", "node"])


def _stats(endpoints: dict[str, tuple[int, int]], cluster: str) -> str:
    from tests.observe.test_collector import envoy_text

    total = sum(t for t, _ in endpoints.values())
    return envoy_text(clusters={cluster: {"total": total, "hist": {5: total}}}, endpoints={cluster: endpoints})


def test_by_version_json_from_the_control_planes_collector(plane, server, capsys):
    """The real operator API and collector: productpage v1's calls to reviews split by the instance that answered."""
    targets = [dataclasses.replace(t, url=f"http://stats.invalid/{t.node}", fallback_urls=())
               for t in plane.scrape_targets()]
    reviews = {w.version: w.addresses[0] for t in targets for w in t.workloads if w.service == "reviews"}
    assert set(reviews) == {"v1", "v2", "v3"}
    cluster = "outbound_reviews|productpage"
    rounds = iter([{a: (0, 0) for a in reviews.values()},
                   {reviews["v1"]: (30, 0), reviews["v2"]: (10, 5), reviews["v3"]: (0, 0)}])
    texts: dict[str, str] = {}

    def fetch(url: str, timeout: float) -> str:
        if url.endswith("/vm1"):
            return texts["vm1"]
        raise OSError("not scraped in this test")

    # a round every interval, on clocks of the test's own (the collector's loop may run a round of its own too)
    base, now = time.time() - 60, [0.0]
    plane.collector._proxies = lambda: targets
    plane.collector._fetch = fetch
    plane.collector._clock = lambda: base + now[0]
    plane.collector._monotonic = lambda: 1000.0 + now[0]
    for counts in rounds:
        now[0] += plane.collector.interval
        texts["vm1"] = _stats(counts, cluster)
        plane.collector.collect_once()
    assert main(["graph", "--by", "version", "-o", "json", "--window", "10m", "--server", server]) == 0
    edges = {(e["source"], e["source_version"], e["destination"], e["destination_version"]): e
             for e in json.loads(capsys.readouterr().out)}
    v1, v2, v3 = (edges[("productpage", "v1", "reviews", v)] for v in ("v1", "v2", "v3"))
    assert v1["requests"] == pytest.approx(30, abs=1) and v2["requests"] == pytest.approx(10, abs=1)
    assert v2["error_rate"] == pytest.approx(0.5) and v3["idle"] and v3["requests"] == 0
    assert v1["source_datacenter"] == v1["destination_datacenter"] == "dc1" and v1["gateways"] == []
    assert not v1["crosses_datacenters"]
    assert main(["graph", "-o", "json", "--window", "10m", "--server", server]) == 0
    [edge] = [e for e in json.loads(capsys.readouterr().out) if (e["source"], e["destination"]) == ("productpage", "reviews")]
    assert edge["source_datacenter"] == edge["destination_datacenter"] == "dc1"
    assert edge["paths"] == [{"source_datacenter": "dc1", "destination_datacenter": "dc1", "gateway": "",
                              "rps": edge["paths"][0]["rps"], "error_rate": pytest.approx(0.125, abs=0.01),
                              "requests": pytest.approx(40, abs=1)}]


class _OlderControlPlane:
    """The operator API of a control plane from before the versioned graph: 400 for the signals it lacks."""

    server = "http://older.invalid"

    def get(self, path: str):
        from meshcore.errors import ApiError

        if path.startswith("/v1/dashboard/summary"):
            return {"collector": {"interval_seconds": 5.0, "history_seconds": 3600.0, "errors": {}}}
        signal = path.split("signal=", 1)[1].split("&", 1)[0]
        if signal.startswith(("version_edge_", "gateway_")):
            raise ApiError(400, f"signal={signal!r}: give one of request_rate, ...")
        if signal == "edge_request_rate":
            return {"series": [{"labels": {"source": "a", "destination": "b"}, "points": [[100.0, 2.0]]}]}
        return {"series": []}

    def proxies(self):
        return []


def test_an_older_control_plane_still_gets_the_service_graph_and_a_clear_no_for_versions():
    from meshcore.cli.graph import from_collector
    from meshcore.errors import MeshError

    [edge], errors = from_collector(_OlderControlPlane(), 60.0)
    assert (edge.source, edge.destination, edge.requests, edge.destination_datacenter, edge.paths) == ("a", "b", 10, "", ())
    with pytest.raises(MeshError, match="does not split the graph by version .* leave out --by version"):
        from_collector(_OlderControlPlane(), 60.0, "version")
