"""The Prometheus rule export: promtool accepts it, and promtool's rule unit tests show the PromQL computes
what meshcore's own signals mean over the series Envoy 1.40 and meshcore really emit (names and labels
as in a recorded agent /metrics: stat prefixes outbound_<svc>_<port>, clusters outbound_<dst>|<src>)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshcore.observe.alerts import effective_rules
from meshcore.observe.prom_rules import render_rule_file, rule_file, signal_expr
from meshcore.resources.loader import load_documents

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package "
                                                             "`prometheus`: apt-get install -y prometheus)")

RULES = """
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: any-errors}
spec: {signal: error_rate, op: ">", threshold: 10%, for: 2m, summary: "{service} {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: slow-ratings}
spec: {signal: p99_ms, match: {service: ratings}, op: ">", threshold: 500ms, summary: "{service} {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: edge-errors}
spec: {signal: edge_error_rate, op: ">=", threshold: 50%, summary: "{source} to {service} {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: denials}
spec: {signal: policy_denied, op: ">", threshold: 1.5/s, summary: "{service} {value}", labels: {team: sec}}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: web-denied}
spec: {signal: policy_denied_by_caller, match: {source: web}, op: ">", threshold: 30/m,
       summary: "{source} to {service} by {policy} {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: shedding}
spec: {signal: circuit_breaker_overflow, op: ">", threshold: 0, summary: "{service} {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: expiring}
spec: {signal: cert_expiry_seconds, op: "<", threshold: 2h, summary: "{service} on {node} in {value}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: out-of-sync}
spec: {signal: proxy_out_of_sync, op: ">", threshold: 0, for: 1m, summary: "{node}"}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: store-suspect}
spec: {signal: store_suspect, op: ">", threshold: 0, summary: "{source}"}
"""

RATINGS_SID = "spiffe://cluster.local/ns/default/sa/ratings"
SERIES = [
    # the callers' outbound listeners: 1 request/s to ratings, half of them 5xx; reviews 1/s, all fine
    ('envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="outbound_ratings_38535",instance="n3"}', "0+60x20"),
    ('envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="outbound_ratings_38535",envoy_response_code_class="5",instance="n3"}', "0+30x20"),
    ('envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="outbound_ratings_38535",envoy_response_code_class="2",instance="n3"}', "0+30x20"),
    ('envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="outbound_reviews_51735",instance="n1"}', "0+60x20"),
    ('envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="outbound_reviews_51735",envoy_response_code_class="2",instance="n1"}', "0+60x20"),
    # ratings latency: every request between 500 and 1000 ms
    ('envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="outbound_ratings_38535",le="500",instance="n3"}', "0+0x20"),
    ('envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="outbound_ratings_38535",le="1000",instance="n3"}', "0+60x20"),
    ('envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="outbound_ratings_38535",le="+Inf",instance="n3"}', "0+60x20"),
    # the reviews -> ratings cluster (Envoy writes outbound:ratings|reviews as outbound_ratings|reviews)
    ('envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_ratings|reviews",instance="n3"}', "0+60x20"),
    ('envoy_cluster_upstream_rq_xx{envoy_cluster_name="outbound_ratings|reviews",envoy_response_code_class="5",instance="n3"}', "0+30x20"),
    ('envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_details|productpage",instance="n1"}', "0+60x20"),
    ('envoy_cluster_upstream_rq_xx{envoy_cluster_name="outbound_details|productpage",envoy_response_code_class="5",instance="n1"}', "0+0x20"),
    # circuit breakers on productpage's cluster for details shed 0.1/s
    ('envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="outbound_details|productpage",instance="n1"}', "0+3x20"),
    ('envoy_cluster_upstream_cx_overflow{envoy_cluster_name="outbound_details|productpage",instance="n1"}', "0+3x20"),
    ('envoy_cluster_upstream_cx_overflow{envoy_cluster_name="outbound_reviews|productpage",instance="n1"}', "0+0x20"),
    # RBAC at details' inbound listener denies 2/s; the per-rule counter must not count twice, nor shadow
    ('envoy_http_rbac_deny_default_deny_details_denied{envoy_rbac_http_prefix="authz",envoy_http_conn_manager_prefix="inbound_details-v1",instance="n2"}', "0+120x20"),
    ('envoy_http_rbac_deny_default_deny_details_policy_default_deny_details_0__denied{envoy_rbac_http_prefix="authz",envoy_http_conn_manager_prefix="inbound_details-v1",instance="n2"}', "0+120x20"),
    ('envoy_http_rbac_shadow_denied{envoy_http_conn_manager_prefix="inbound_details-v1",instance="n2"}', "0+120x20"),
    # the agents' per-caller denials: web -> details 1/s by default-deny-details, reviews -> details 0.2/s
    ('meshcore_policy_denied_total{source_service="web",destination_service="details",policy="default-deny-details",instance="n2"}', "0+60x20"),
    ('meshcore_policy_denied_total{source_service="reviews",destination_service="details",policy="default-deny-details",instance="n2"}', "0+12x20"),
    ('meshcore_service_instance_info{instance_id="details-v1",service="details",node="n2",instance="cp"}', "1+0x20"),
    ('meshcore_service_instance_info{instance_id="ratings-v1",service="ratings",node="n3",instance="cp"}', "1+0x20"),
    # certificates: ratings' expires 1h after the evaluation time (10m), reviews' far later
    (f'meshcore_certificate_expiry_timestamp_seconds{{spiffe_id="{RATINGS_SID}",node="n3",instance="cp"}}', "4200+0x20"),
    ('meshcore_certificate_expiry_timestamp_seconds{spiffe_id="spiffe://cluster.local/ns/default/sa/reviews",node="n1",instance="cp"}', "2000000000+0x20"),
    ('meshcore_proxy_out_of_sync{node="n2",instance="cp"}', "0+0x20"),
    ('meshcore_proxy_out_of_sync{node="n3",instance="cp"}', "1+0x20"),
    # one control plane's resource store turned suspect at 5m (Consul KV emptied); the other's is fine
    ('meshcore_resource_store_suspect{instance="cp"}', "0x4 1x15"),
    ('meshcore_resource_store_suspect{instance="cp2"}', "0+0x20"),
]


def expect(alertname: str, labels: dict, summary: str) -> dict:
    return {"eval_time": "10m", "alertname": alertname,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary}}]}


CASES = [
    expect("AnyErrors", {"service": "ratings", "severity": "warning"}, "ratings 50%"),
    expect("SlowRatings", {"service": "ratings", "severity": "warning"}, "ratings 995ms"),
    expect("EdgeErrors", {"source": "reviews", "destination": "ratings", "severity": "warning"}, "reviews to ratings 50%"),
    expect("Denials", {"service": "details", "team": "sec", "severity": "warning"}, "details 2/s"),
    expect("WebDenied", {"source": "web", "service": "details", "policy": "default-deny-details",
                         "severity": "warning"}, "web to details by default-deny-details 1/s"),
    expect("Shedding", {"service": "details", "severity": "warning"}, "details 0.1/s"),
    expect("Expiring", {"spiffe_id": RATINGS_SID, "node": "n3", "severity": "warning"}, f"{RATINGS_SID} on n3 in 1h 0m 0s"),
    expect("OutOfSync", {"node": "n3", "severity": "warning"}, "n3"),
    expect("StoreSuspect", {"source": "cp", "severity": "warning"}, "cp"),
]


def export(tmp_path: Path, rules) -> Path:
    out = tmp_path / "meshcore.rules.yml"
    out.write_text(render_rule_file(rules))
    return out


@needs_promtool
def test_promtool_accepts_the_default_rules(tmp_path):
    path = export(tmp_path, effective_rules([]))
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 13 rules found" in res.stdout


@needs_promtool
def test_promql_computes_the_signals_over_real_series_names(tmp_path):
    rules = effective_rules(load_documents(RULES, "rules.yaml"), defaults=False)
    path = export(tmp_path, rules)
    test = {"rule_files": [path.name], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in SERIES],
                       "alert_rule_test": CASES + [
                           {"eval_time": "1m", "alertname": "AnyErrors", "exp_alerts": []},  # pending: for 2m
                           {"eval_time": "0m", "alertname": "OutOfSync", "exp_alerts": []},  # pending: for 1m
                       ]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr + path.read_text()


def test_rule_file_shape_and_match_pushed_into_selectors():
    rules = effective_rules(load_documents(RULES, "rules.yaml"))
    doc = rule_file(rules)
    [group] = doc["groups"]
    by_name = {r["alert"]: r for r in group["rules"]}
    assert "HighErrorRate" in by_name and "SlowRatings" in by_name
    slow = by_name["SlowRatings"]
    assert slow["labels"] == {"severity": "warning"} and "for" not in slow
    assert 'envoy_http_conn_manager_prefix=~"outbound_ratings_[0-9]+"' in slow["expr"]
    assert slow["expr"].endswith("> 500")
    assert by_name["HighErrorRate"]["for"] == "1m" and by_name["HighErrorRate"]["labels"]["severity"] == "critical"
    assert signal_expr("edge_error_rate", {"source": "a.b"}).count('outbound_[^|]+\\\\|a\\\\.b(') == 2


def test_disabled_rules_are_not_exported():
    off = load_documents("apiVersion: telemetry.mesh.io/v1beta1\nkind: AlertRule\nmetadata: {name: policy-denials}\n"
                         "spec: {disabled: true}\n", "off.yaml")
    names = [r["alert"] for r in rule_file(effective_rules(off))["groups"][0]["rules"]]
    assert "PolicyDenials" not in names and len(names) == 12
