"""The collector's Envoy stats parsing: only the families it reads are parsed, with the same result."""

from __future__ import annotations

from pathlib import Path

from meshcore.observe._proxy_stats import parse_proxy_stats, relevant_lines

DATA = Path(__file__).parent / "data" / "envoy-1.40-n1-stats.prom"

# Families a VM's Envoy exposes by the thousand that the collector never reads.
NOISE = """# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="outbound_reviews|productpage"} 7
# TYPE envoy_cluster_membership_healthy gauge
envoy_cluster_membership_healthy{envoy_cluster_name="outbound_reviews|productpage"} 3
# TYPE envoy_server_memory_allocated gauge
envoy_server_memory_allocated{} 12345
# TYPE meshcore_agent_svid_renewals_total counter
meshcore_agent_svid_renewals_total 2
"""


def test_filtering_keeps_what_the_collector_reads():
    text = DATA.read_text()
    noisy = NOISE + text + NOISE.replace("reviews", "ratings")
    kept = relevant_lines(noisy)
    assert "envoy_cluster_membership_healthy" not in kept and "envoy_server_memory" not in kept
    assert "meshcore_agent_" not in kept and "upstream_cx_total" not in kept
    assert parse_proxy_stats(noisy) == parse_proxy_stats(text)
    stats = parse_proxy_stats(text)
    assert stats.graph.clusters and stats.inbound  # the data file has traffic: the test reads something


def test_type_lines_of_read_families_are_kept():
    kept = relevant_lines("# HELP envoy_cluster_upstream_rq_total x\n# TYPE envoy_cluster_upstream_rq_total counter\n"
                          'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_a|b"} 4\n# TYPE other gauge\n')
    assert kept.splitlines() == [
        "# HELP envoy_cluster_upstream_rq_total x",
        "# TYPE envoy_cluster_upstream_rq_total counter",
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_a|b"} 4',
    ]
