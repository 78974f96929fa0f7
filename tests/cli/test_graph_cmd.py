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
    assert table[2].split() == ["productpage", "details", "0.00", "0.0%", "-"]
    dot = render_dot(EDGES)
    assert dot.startswith("digraph mesh {") and dot.endswith("}")
    assert '"reviews" -> "ratings" [label="12.30 rps\\n100.0% err\\np99 4.5ms", color=red];' in dot
