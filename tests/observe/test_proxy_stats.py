"""The collector's Envoy stats parsing: only the families it reads are parsed, with the same result."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.observe._proxy_stats import parse_proxy_stats, parse_proxy_stats_slow, relevant_lines

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


# Edge cases of the exposition format the focused parser must read as prometheus_client's parser does.
EDGES = r"""# HELP envoy_cluster_upstream_rq_retry_limit_exceeded retries exhausted
# TYPE envoy_cluster_upstream_rq_retry_limit_exceeded counter
envoy_cluster_upstream_rq_retry_limit_exceeded{envoy_cluster_name="outbound_a|b"} 3 1700000000000
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_a|b"} 9
envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="outbound_a|b"} 2
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class="5", envoy_http_conn_manager_prefix="inbound_x-1"} 4
envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="outbound_c_8080"} 1
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound_x-1",le="0.5"} 1
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound_x-1",le="+Inf"} 5
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="inbound_x-1"} 12.5
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="inbound_x-1"} 5
# TYPE envoy_http_rbac_allow_denied counter
envoy_http_rbac_allow_denied{envoy_rbac_http_prefix="authz",envoy_http_conn_manager_prefix="inbound_x-1"} 6
envoy_tcp_inbound_db_1_authz_deny_rbac_denied{} 7
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_q\"uote\\d|b\nx"} 8
"""


@pytest.mark.parametrize("text", [DATA.read_text(), NOISE + DATA.read_text(), EDGES, EDGES + DATA.read_text()],
                         ids=["envoy", "noisy", "edges", "edges+envoy"])
def test_focused_parser_reads_what_prometheus_client_reads(text):
    from meshcore.observe._proxy_stats import _parsed_samples, _samples

    kept = relevant_lines(text)
    assert list(_samples(kept)) == list(_parsed_samples(kept))
    assert parse_proxy_stats(text) == parse_proxy_stats_slow(text)


def test_edges_are_read():
    stats = parse_proxy_stats(EDGES)
    assert stats.retry_exhausted == {"outbound_a|b": 3.0} and stats.overflow == {"outbound_a|b": 2.0}
    assert stats.denied == {"inbound_x-1": 6.0, "inbound_db_1": 7.0}
    assert stats.inbound["inbound_x-1"].errors == 4.0 and stats.inbound["inbound_x-1"].buckets[float("inf")] == 5.0
    assert stats.graph.clusters['outbound_q"uote\\d|b\nx'].total == 8.0
    assert stats.graph.listeners["outbound_c_8080"].errors == 1.0


def test_a_line_it_does_not_read_falls_back_to_prometheus_client():
    from meshcore.observe._proxy_stats import _samples, _Unparsable

    text = EDGES + 'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_z|y"} 1 2 3\n'  # lax: its parser reads it
    with pytest.raises(_Unparsable):
        list(_samples(relevant_lines(text)))
    assert parse_proxy_stats(text) == parse_proxy_stats_slow(text)
    assert parse_proxy_stats(text).graph.clusters["outbound_z|y"].total == 1.0
