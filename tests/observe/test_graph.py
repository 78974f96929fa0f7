"""Service graph math on handcrafted Envoy ``/stats/prometheus`` text (the shape Envoy 1.40 prints)."""

from __future__ import annotations

import math

import pytest

from meshcore.observe.graph import compute_edges, parse_envoy_prometheus, quantile_from_buckets


def _histogram(metric: str, label: str, key: str, buckets: dict[float, float]) -> list[str]:
    out = []
    for le, count in buckets.items():
        le_text = "+Inf" if math.isinf(le) else f"{le:g}"
        out.append(f'{metric}_bucket{{{label}="{key}",le="{le_text}"}} {count}')
    top = buckets[max(buckets)]
    out += [f'{metric}_sum{{{label}="{key}"}} 0', f'{metric}_count{{{label}="{key}"}} {top}']
    return out


def cluster(name: str, total: float, errors: float, buckets: dict[float, float]) -> list[str]:
    lab = "envoy_cluster_name"
    return [f'envoy_cluster_upstream_rq_total{{{lab}="{name}"}} {total}',
            f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",{lab}="{name}"}} {total - errors}',
            f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",{lab}="{name}"}} {errors}',
            *_histogram("envoy_cluster_upstream_rq_time", lab, name, buckets)]


def listener(prefix: str, total: float, errors: float, buckets: dict[float, float]) -> list[str]:
    lab = "envoy_http_conn_manager_prefix"
    return [f'envoy_http_downstream_rq_total{{{lab}="{prefix}"}} {total}',
            f'envoy_http_downstream_rq_xx{{envoy_response_code_class="5",{lab}="{prefix}"}} {errors}',
            *_histogram("envoy_http_downstream_rq_time", lab, prefix, buckets)]


def text(*blocks: list[str]) -> str:
    lines = ["# TYPE envoy_cluster_upstream_rq_total counter", "# TYPE envoy_cluster_upstream_rq_xx counter",
             "# TYPE envoy_cluster_upstream_rq_time histogram", "# TYPE envoy_http_downstream_rq_total counter",
             "# TYPE envoy_http_downstream_rq_xx counter", "# TYPE envoy_http_downstream_rq_time histogram"]
    # Prometheus text groups samples by family: sort every sample line under its family's TYPE line.
    samples = [line for block in blocks for line in block]
    grouped = []
    for type_line in lines:
        family = type_line.split()[2]
        grouped.append(type_line)
        grouped += [s for s in samples if s.split("{")[0] in (family, f"{family}_bucket", f"{family}_sum",
                                                               f"{family}_count")]
    return "\n".join(grouped) + "\n"


INF = math.inf


def test_quantile_interpolates_inside_the_bucket():
    assert quantile_from_buckets(0.75, {10.0: 50, 20.0: 100, INF: 100}) == pytest.approx(15.0)
    assert quantile_from_buckets(0.5, {10.0: 50, 20.0: 100, INF: 100}) == pytest.approx(10.0)
    assert quantile_from_buckets(0.1, {10.0: 50, INF: 50}) == pytest.approx(1.0)  # first bucket from 0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_empty_is_none():
    assert quantile_from_buckets(0.99, {10.0: 50, INF: 100}) == 10.0
    assert quantile_from_buckets(0.99, {10.0: 0, INF: 0}) is None
    assert quantile_from_buckets(0.99, {}) is None


def test_edge_from_listener_deltas_rate_errors_and_p99():
    before = parse_envoy_prometheus(text(
        cluster("outbound_ratings|reviews", 10, 0, {1: 10, 5: 10, 10: 10, INF: 10}),
        listener("outbound_ratings_9001", 10, 0, {1: 5, 5: 10, 10: 10, INF: 10})))
    after = parse_envoy_prometheus(text(
        cluster("outbound_ratings|reviews", 60, 0, {1: 60, 5: 60, 10: 60, INF: 60}),
        listener("outbound_ratings_9001", 110, 50, {1: 5, 5: 60, 10: 109, INF: 110})))
    [edge] = compute_edges({"n3": (before, after, 4.0)})
    assert (edge.source, edge.destination) == ("reviews", "ratings")
    assert edge.rps == pytest.approx(25.0)           # 100 requests in 4 s, counted at the caller's listener
    assert edge.error_rate == pytest.approx(0.5)      # 50 5xx (e.g. injected aborts that never reach the cluster)
    assert edge.p99_ms == pytest.approx(5 + 5 * (99 - 50) / (99 - 50))
    assert edge.to_dict()["requests"] == 100


def test_same_edge_on_two_proxies_adds_up_and_idle_edges_are_listed():
    def proxy(total, errors):
        return parse_envoy_prometheus(text(
            cluster("outbound_ratings|reviews", total, errors, {10: total, INF: total}),
            cluster("outbound_details|productpage", 0, 0, {10: 0, INF: 0})))
    edges = compute_edges({"n2": (proxy(0, 0), proxy(20, 2), 2.0), "n3": (proxy(5, 0), proxy(25, 8), 2.0)})
    by = {(e.source, e.destination): e for e in edges}
    ratings = by[("reviews", "ratings")]
    assert ratings.rps == pytest.approx(20.0)          # 10/s + 10/s
    assert ratings.error_rate == pytest.approx(10 / 40)
    idle = by[("productpage", "details")]
    assert idle.rps == 0 and idle.error_rate == 0 and idle.p99_ms is None


def test_two_local_callers_of_one_upstream_fall_back_to_cluster_stats():
    def proxy(a, b, shared):
        return parse_envoy_prometheus(text(
            cluster("outbound_details|productpage", a, 0, {10: a, INF: a}),
            cluster("outbound_details|reviews", b, b, {10: b, INF: b}),
            listener("outbound_details_9100", shared, 0, {10: shared, INF: shared})))
    edges = {(e.source, e.destination): e for e in compute_edges({"n1": (proxy(0, 0, 0), proxy(30, 10, 40), 10.0)})}
    assert edges[("productpage", "details")].rps == pytest.approx(3.0)
    assert edges[("reviews", "details")].rps == pytest.approx(1.0)
    assert edges[("reviews", "details")].error_rate == pytest.approx(1.0)


def test_subset_clusters_count_for_their_service_and_a_counter_reset_counts_from_zero():
    before = parse_envoy_prometheus(text(cluster("outbound_reviews|productpage|v2", 500, 0, {10: 500, INF: 500})))
    after = parse_envoy_prometheus(text(cluster("outbound_reviews|productpage|v2", 12, 3, {10: 12, INF: 12})))
    [edge] = compute_edges({"n1": (before, after, 3.0)})
    assert (edge.source, edge.destination) == ("productpage", "reviews")
    assert edge.rps == pytest.approx(4.0)
    assert edge.error_rate == pytest.approx(0.25)


def test_inbound_and_admin_stats_are_not_edges():
    stats = parse_envoy_prometheus(text(cluster("local_app_reviews-v1", 5, 0, {10: 5, INF: 5}),
                                        listener("admin", 3, 0, {10: 3, INF: 3}),
                                        listener("inbound_reviews-v1", 3, 0, {10: 3, INF: 3})))
    assert stats.clusters == {} and stats.listeners == {}
    assert compute_edges({"n1": (stats, stats, 1.0)}) == []
