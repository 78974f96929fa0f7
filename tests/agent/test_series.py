"""The agent's derived series from a real Envoy 1.40 stats capture (tests/observe/data), and /proc."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshcore.agent._series import (ALLOW_NO_MATCH, edge_families, policy_audited_family, policy_denied_family,
                                    proc_usage, service_of, usage_families)

CAPTURE = (Path(__file__).resolve().parents[1] / "observe" / "data" / "envoy-1.40-n1-stats.prom").read_text()


def _samples(families) -> list:
    class _C:
        def describe(self):
            return []

        def collect(self):
            return iter(families)

    registry = CollectorRegistry()
    registry.register(_C())
    text = generate_latest(registry).decode()  # what the agent serves must parse back
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _value(samples, name, **labels) -> float:
    hits = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_red_per_edge_from_envoy_stats():
    samples = _samples(edge_families(CAPTURE))
    edge = {"source_service": "productpage", "destination_service": "details"}
    assert _value(samples, "meshcore_requests_total", response_code_class="2xx", **edge) == 21
    assert _value(samples, "meshcore_requests_total", response_code_class="5xx", **edge) == 0
    # the histogram is what Envoy last flushed: the outbound listener's 11 samples, milliseconds -> seconds
    assert _value(samples, "meshcore_request_duration_seconds_count", **edge) == 11
    assert _value(samples, "meshcore_request_duration_seconds_bucket", le="+Inf", **edge) == 11
    assert abs(_value(samples, "meshcore_request_duration_seconds_sum", **edge) - 0.050972615902) < 1e-9
    assert _value(samples, "meshcore_retry_exhausted_total", **edge) == 0
    assert _value(samples, "meshcore_circuit_breaker_limit", resource="connections", **edge) == 1024
    sat = _value(samples, "meshcore_circuit_breaker_saturation", resource="connections", **edge)
    assert 0 <= sat <= 1
    edges = {(s.labels["source_service"], s.labels["destination_service"]) for s in samples
             if s.name == "meshcore_requests_total"}
    assert edges == {("productpage", "details"), ("productpage", "reviews")}


def test_limits_from_destination_rule_drive_saturation():
    text = ('envoy_cluster_upstream_cx_active{envoy_cluster_name="outbound_ratings|reviews"} 3\n'
            'envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="outbound_ratings|reviews"} 4\n'
            'envoy_cluster_upstream_cx_overflow{envoy_cluster_name="outbound_ratings|reviews"} 1\n')
    samples = _samples(edge_families(text, {"outbound_ratings|reviews": {"connections": 4}}))
    edge = {"source_service": "reviews", "destination_service": "ratings"}
    assert _value(samples, "meshcore_circuit_breaker_saturation", resource="connections", **edge) == 0.75
    assert _value(samples, "meshcore_circuit_breaker_overflow_total", **edge) == 5
    assert _value(samples, "meshcore_upstream_connections_active", **edge) == 3


def test_policy_denials_by_destination_and_policy():
    stats = {
        # one DENY stage for every DENY policy: its total is left out, its per-rule counters name the policy
        "http.inbound_productpage-v1.rbac.authz.deny.denied": 4,
        "http.inbound_productpage-v1.rbac.authz.deny.policy.default/no-post[0].denied": 2,
        "http.inbound_productpage-v1.rbac.authz.deny.policy.default/no-post[1].denied": 1,
        "http.inbound_productpage-v1.rbac.authz.deny.policy.shop/no-put[0].denied": 1,
        "http.inbound_productpage-v1.rbac.authz.allow.denied": 2,
        "http.inbound_productpage-v1.rbac.authz.allow.policy.default/get[0].allowed": 40,
        "http.inbound_productpage-v1.rbac.authz.audit.denied": 0,
        "tcp.inbound_db-v1.authz.deny.shop.block.rbac.denied": 5,
        "http.inbound_productpage-v1.rbac.authz.allow.allowed": 40,
    }
    samples = _samples([policy_denied_family(stats, ["productpage", "db"])])
    assert _value(samples, "meshcore_policy_denied_total", destination_service="productpage",
                  policy="default/no-post", source_service="unknown") == 3
    assert _value(samples, "meshcore_policy_denied_total", destination_service="productpage",
                  policy=ALLOW_NO_MATCH) == 2
    assert _value(samples, "meshcore_policy_denied_total", destination_service="productpage", policy="shop/no-put") == 1
    assert _value(samples, "meshcore_policy_denied_total", destination_service="db", policy="shop/block") == 5
    assert len([s for s in samples if s.name == "meshcore_policy_denied_total"]) == 4
    assert service_of("reviews-v2", ["reviews", "ratings"]) == "reviews"


def test_access_log_counts_replace_the_unknown_series():
    """One source or the other: with the log's per-caller counts no "unknown" series is added, so a
    sum over the family counts every denial once."""
    stats = {"http.inbound_productpage-v1.rbac.authz.deny.policy.default/no-post[0].denied": 7,
             "http.inbound_productpage-v1.rbac.authz.audit.policy.default/watch[0].allowed": 4,
             "http.inbound_productpage-v1.rbac.authz.audit.allowed": 9}
    from_log = {("ingress-gateway", "productpage", "default/no-post"): 2.0,
                ("reviews", "productpage", "default/no-post"): 1.0}
    samples = _samples([policy_denied_family(stats, ["productpage"], from_log)])
    assert {(s.labels["source_service"], s.value) for s in samples if s.name == "meshcore_policy_denied_total"} == \
        {("ingress-gateway", 2.0), ("reviews", 1.0)}
    audited = _samples([policy_audited_family(stats, ["productpage"])])
    assert _value(audited, "meshcore_policy_audited_total", source_service="unknown",
                  destination_service="productpage", policy="default/watch") == 4
    assert len([s for s in audited if s.name == "meshcore_policy_audited_total"]) == 1
    logged = _samples([policy_audited_family(stats, ["productpage"], {})])
    assert [s for s in logged if s.name == "meshcore_policy_audited_total"] == []


def test_use_of_live_processes():
    me = proc_usage(os.getpid())
    assert me is not None and me.cpu_seconds > 0 and me.resident_bytes > 1e6 and me.open_fds >= 3
    assert proc_usage(2 ** 22 + 12345) is None  # beyond pid_max: gone
    text = 'envoy_listener_downstream_cx_active{envoy_listener_address="127.0.0.11_9080"} 2\n'
    samples = _samples(usage_families({"agent": os.getpid(), "envoy": None}, text))
    assert _value(samples, "meshcore_process_open_fds", process="agent") >= 3
    assert not [s for s in samples if s.labels.get("process") == "envoy"]
    assert _value(samples, "meshcore_downstream_connections_active", listener_address="127.0.0.11_9080") == 2


def test_the_narrow_parser_reads_what_prometheus_client_reads():
    """The hand-picked sample reader (much cheaper per scrape) agrees with prometheus_client's parser
    on every sample it keeps, label escapes included."""
    from prometheus_client.parser import text_string_to_metric_families

    from meshcore.agent._series import _WANTED_NAMES, _samples

    text = CAPTURE + 'envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="outbound:a\\"b|c"} 2\n'
    reference = sorted((s.name.removesuffix("_total"), tuple(sorted(s.labels.items())), s.value)
                       for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name.removesuffix("_total") in _WANTED_NAMES)
    ours = sorted((name.removesuffix("_total"), tuple(sorted(labels.items())), value)
                  for name, labels, value in _samples(text))
    assert ours == reference and len(ours) > 20
    assert ("envoy_cluster_upstream_rq_xx", (("envoy_cluster_name", 'outbound:a"b|c'),
                                             ("envoy_response_code_class", "5")), 2.0) in ours


def test_unwanted_families_are_skipped_whole_and_an_unchanged_scrape_is_not_parsed_again():
    from meshcore.agent import _series

    by_line = list(_series._wanted_lines(CAPTURE.splitlines()))
    assert list(_series._samples(CAPTURE)) == by_line and by_line  # the same samples, family blocks or lines
    first = _series._parse(CAPTURE)
    again = _series._parse(CAPTURE[:-1] + CAPTURE[-1])  # another scrape, the same wanted blocks (an idle proxy)
    assert again is first
    moved = CAPTURE.replace("envoy_cluster_upstream_rq_xx{", "envoy_cluster_upstream_rq_xx{x=\"1\",", 1)
    assert _series._parse(moved) is not first
