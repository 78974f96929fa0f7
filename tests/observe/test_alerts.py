"""The alert evaluator: Prometheus semantics (pending -> firing -> resolved), match, defaults, payloads."""

from __future__ import annotations

import pytest

from meshcore.observe.alerts import (
    FIRING,
    PENDING,
    RESOLVED,
    AlertEvaluator,
    Rule,
    effective_rules,
    label_fingerprint,
    webhook_payload,
)
from meshcore.observe.signals import Signals, labels
from meshcore.resources.loader import load_documents

RATINGS, REVIEWS = labels(service="ratings"), labels(service="reviews")


def rule_docs(*specs: tuple[str, str]):
    text = "\n---\n".join(
        f"apiVersion: telemetry.mesh.io/v1beta1\nkind: AlertRule\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        for name, spec in specs)
    return load_documents(text, "rules.yaml")


ERRORS_30S = ("ratings-errors", '  signal: error_rate\n  match: {service: ratings}\n  op: ">"\n  threshold: 10%\n'
              '  for: 30s\n  severity: critical\n  summary: "{service} fails {value}"\n  labels: {team: t1}\n')


def at(t: float, **signals) -> Signals:
    return Signals(at=t, values=signals)


def states(alerts):
    return [(a.name, dict(a.labels).get("service"), a.state) for a in alerts]


def test_pending_then_firing_after_for_then_resolved_once():
    ev = AlertEvaluator(rule_docs(ERRORS_30S))
    assert ev.evaluate(at(0, error_rate={RATINGS: 0.01})) == []
    [a] = ev.evaluate(at(10, error_rate={RATINGS: 0.5}))
    assert (a.state, a.active_since, a.fired_at) == (PENDING, 10, None)
    assert states(ev.evaluate(at(39, error_rate={RATINGS: 0.5}))) == [("ratings-errors", "ratings", PENDING)]
    [a] = ev.evaluate(at(40, error_rate={RATINGS: 0.6}))
    assert (a.state, a.active_since, a.fired_at, a.value) == (FIRING, 10, 40, 0.6)
    assert a.labels == {"service": "ratings", "team": "t1", "alertname": "RatingsErrors", "severity": "critical"}
    assert a.annotations["summary"] == "ratings fails 60%"
    assert ev.active() == [a]
    [r] = ev.evaluate(at(50, error_rate={RATINGS: 0.0}))
    assert (r.state, r.resolved_at, r.fired_at, r.value) == (RESOLVED, 50, 40, 0.0)
    assert ev.active() == []
    assert ev.evaluate(at(60, error_rate={RATINGS: 0.0})) == []  # reported once, then dropped


def test_a_pending_alert_that_stops_holding_is_dropped_silently_and_restarts_its_clock():
    ev = AlertEvaluator(rule_docs(ERRORS_30S))
    ev.evaluate(at(0, error_rate={RATINGS: 0.5}))
    assert ev.evaluate(at(20, error_rate={RATINGS: 0.05})) == []
    [a] = ev.evaluate(at(40, error_rate={RATINGS: 0.5}))
    assert (a.state, a.active_since) == (PENDING, 40)


def test_a_missing_entry_resolves_a_firing_alert():
    ev = AlertEvaluator(rule_docs(ERRORS_30S))
    ev.evaluate(at(0, error_rate={RATINGS: 0.5}))
    assert ev.evaluate(at(30, error_rate={RATINGS: 0.5}))[0].state == FIRING
    [r] = ev.evaluate(at(35))  # idle service: no error_rate entry at all
    assert r.state == RESOLVED and r.value == 0.5  # last value kept when there is no current one


def test_for_zero_fires_at_once_and_match_selects_label_sets():
    ev = AlertEvaluator(rule_docs(("slow", '  signal: p99_ms\n  op: ">="\n  threshold: 500ms\n')))
    out = ev.evaluate(at(0, p99_ms={RATINGS: 500.0, REVIEWS: 499.0}))
    assert states(out) == [("slow", "ratings", FIRING)]
    ev = AlertEvaluator(rule_docs(ERRORS_30S))
    assert ev.evaluate(at(0, error_rate={REVIEWS: 0.9})) == []  # match {service: ratings}


def test_one_alert_per_label_set_and_less_than():
    ev = AlertEvaluator(rule_docs(("expiring", '  signal: cert_expiry_seconds\n  op: "<"\n  threshold: 2h\n'
                                               '  summary: "{service} on {node} expires in {value}"\n')))
    a1 = labels(spiffe_id="spiffe://cluster.local/ns/default/sa/ratings", node="n3")
    a2 = labels(spiffe_id="spiffe://cluster.local/ns/default/sa/reviews", node="n1")
    out = ev.evaluate(at(0, cert_expiry_seconds={a1: 600.0, a2: 86400.0}))
    assert [(a.labels["node"], a.state) for a in out] == [("n3", FIRING)]
    assert out[0].annotations["summary"] == "ratings on n3 expires in 10m"


def test_label_less_signal():
    ev = AlertEvaluator(effective_rules([]))
    t0 = 1_000_000.0
    ev.evaluate(at(t0, ca_root_expiry_seconds={(): 86400.0}))
    [a] = ev.evaluate(at(t0 + 300, ca_root_expiry_seconds={(): 86100.0}))
    assert (a.name, a.state, a.labels) == ("ca-root-expiring", FIRING, {"alertname": "CaRootExpiring", "severity": "warning"})


def test_nan_never_meets_a_condition():
    ev = AlertEvaluator(rule_docs(("slow", '  signal: p99_ms\n  op: "<"\n  threshold: 1\n')))
    assert ev.evaluate(at(0, p99_ms={RATINGS: float("nan")})) == []


def test_defaults_ship_on_and_can_be_disabled_or_overridden_by_name():
    names = {r.name for r in effective_rules([]) if not r.disabled}
    assert names == {"high-error-rate", "high-latency-p99", "certificate-expiring", "ca-root-expiring",
                     "circuit-breaker-shedding", "retries-exhausted", "policy-denials", "proxy-out-of-sync",
                     "proxy-metrics-unreachable", "control-plane-loop-restarted", "resources-rejected",
                     "catalog-holding", "resource-store-suspect"}
    user = rule_docs(("policy-denials", "  disabled: true\n"),
                     ("high-error-rate", '  signal: error_rate\n  op: ">"\n  threshold: 20%\n  for: 10s\n'))
    rules = {r.name: r for r in effective_rules(user)}
    assert rules["policy-denials"].disabled and rules["policy-denials"].overrides_default
    assert rules["high-error-rate"].threshold == 0.2 and rules["high-error-rate"].origin == "AlertRule/default/high-error-rate"
    assert rules["proxy-out-of-sync"].origin == "default"

    ev = AlertEvaluator(effective_rules(user))
    sig = dict(policy_denied={RATINGS: 50.0}, error_rate={RATINGS: 0.1})
    ev.evaluate(at(0, **sig))
    assert ev.evaluate(at(600, **sig)) == []  # the denials default is off; 10% is over 5% but not over 20%
    ev.evaluate(at(610, error_rate={RATINGS: 0.3}))
    assert states(ev.evaluate(at(620, error_rate={RATINGS: 0.3}))) == [("high-error-rate", "ratings", FIRING)]


def test_default_rule_fires_after_its_for():
    ev = AlertEvaluator(effective_rules([]))
    assert states(ev.evaluate(at(0, error_rate={RATINGS: 0.06}))) == [("high-error-rate", "ratings", PENDING)]
    assert ev.evaluate(at(59, error_rate={RATINGS: 0.06}))[0].state == PENDING
    [a] = ev.evaluate(at(60, error_rate={RATINGS: 0.06}))
    assert a.state == FIRING and a.severity == "critical" and a.annotations["summary"] == "ratings fails 6% of its requests"


def test_removing_a_rule_resolves_its_firing_alerts():
    ev = AlertEvaluator(rule_docs(("slow", '  signal: p99_ms\n  op: ">"\n  threshold: 1\n')))
    ev.evaluate(at(0, p99_ms={RATINGS: 5.0}))
    ev.set_rules([])
    assert states(ev.evaluate(at(1, p99_ms={RATINGS: 5.0}))) == [("slow", "ratings", RESOLVED)]


def test_rules_round_trip_through_the_api_shape():
    for rule in effective_rules([]):
        assert Rule.from_dict(rule.to_dict()) == rule


def test_fingerprint_is_alertmanagers():
    # Values computed by Prometheus' model.LabelSet.Fingerprint (FNV-1a 64); the empty set is the offset basis.
    assert label_fingerprint({}) == "cbf29ce484222325"
    assert label_fingerprint({"a": "b"}) != label_fingerprint({"a": "c"})
    assert label_fingerprint({"a": "b", "c": "d"}) == label_fingerprint({"c": "d", "a": "b"})


def test_webhook_payload_is_alertmanager_v4():
    ev = AlertEvaluator(rule_docs(ERRORS_30S))
    ev.evaluate(at(1_700_000_000, error_rate={RATINGS: 0.5}))
    firing = ev.evaluate(at(1_700_000_030, error_rate={RATINGS: 0.5}))
    body = webhook_payload(firing, receiver="meshcore", external_url="http://cp:15000",
                           generator_url="http://cp:15000/v1/alerts/rules?name=ratings-errors")
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "meshcore"
    assert body["groupKey"] == '{}:{alertname="RatingsErrors"}'
    assert body["groupLabels"] == {"alertname": "RatingsErrors"}
    assert body["commonLabels"]["service"] == "ratings" and body["externalURL"] == "http://cp:15000"
    [a] = body["alerts"]
    assert a["startsAt"] == "2023-11-14T22:13:50.000Z" and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert a["fingerprint"] == label_fingerprint(a["labels"]) and a["generatorURL"].endswith("name=ratings-errors")
    resolved = ev.evaluate(at(1_700_000_040, error_rate={RATINGS: 0.0}))
    body = webhook_payload(resolved, receiver="meshcore", external_url="")
    assert body["status"] == "resolved" and body["alerts"][0]["endsAt"] == "2023-11-14T22:14:00.000Z"


@pytest.mark.parametrize("op,value,fires", [(">", 0.1, False), (">=", 0.1, True), ("<", 0.1, False), ("<=", 0.1, True)])
def test_operators(op, value, fires):
    ev = AlertEvaluator(rule_docs(("r", f'  signal: error_rate\n  op: "{op}"\n  threshold: 10%\n')))
    assert bool(ev.evaluate(at(0, error_rate={RATINGS: value}))) is fires


def test_keep_firing_for_rides_out_a_gap_then_resolves():
    ev = AlertEvaluator(rule_docs(("flaky", '  signal: error_rate\n  op: ">"\n  threshold: 10%\n  for: 5s\n'
                                            '  keepFiringFor: 10s\n')))
    ev.evaluate(at(0, error_rate={RATINGS: 0.5}))
    assert ev.evaluate(at(5, error_rate={RATINGS: 0.5}))[0].state == FIRING
    assert ev.evaluate(at(8))[0].state == FIRING  # no entry (a missed scrape): still firing
    assert ev.evaluate(at(12, error_rate={RATINGS: 0.5}))[0].fired_at == 5  # the same alert, not a new one
    assert ev.evaluate(at(21, error_rate={RATINGS: 0.0}))[0].state == FIRING  # 9s since it last held
    [r] = ev.evaluate(at(22, error_rate={RATINGS: 0.0}))
    assert (r.state, r.resolved_at) == (RESOLVED, 22)
    # a pending alert is not kept: keepFiringFor only applies once it fired
    ev.evaluate(at(30, error_rate={RATINGS: 0.5}))
    assert ev.evaluate(at(31)) == []
