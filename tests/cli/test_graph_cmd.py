"""`meshctl graph` argument parsing and rendering (the scraping is covered by tests/e2e/test_observability.py)."""

from __future__ import annotations

import argparse

from meshcore.cli.graph import register, render_dot, render_table
from meshcore.observe.graph import Edge

EDGES = [Edge("reviews", "ratings", 12.3, 1.0, 4.5, 40), Edge("productpage", "details", 0.0, 0.0, None, 0)]


def test_register_adds_graph_with_its_own_output_choices():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = p.parse_args(["graph", "-o", "dot", "--window", "2s", "--server", "http://127.0.0.1:1"])
    assert (args.graph_output, args.window, args.server) == ("dot", 2.0, "http://127.0.0.1:1")  # seconds, parsed
    assert p.parse_args(["graph"]).graph_output == "table"


def test_table_and_dot_show_rate_errors_and_p99():
    table = render_table(EDGES).splitlines()
    assert table[0].split() == ["SOURCE", "DESTINATION", "RPS", "ERRORS", "P99"]
    assert table[1].split() == ["reviews", "ratings", "12.30", "100.0%", "4.5ms"]
    assert table[2].split() == ["productpage", "details", "idle", "0.0%", "-"]
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
