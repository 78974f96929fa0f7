"""AlertRule: schema, field-path errors, threshold units, and that it never touches a proxy's config."""

from __future__ import annotations

import pytest

from meshcore.errors import ValidationError
from meshcore.observe.signals import SIGNAL_LABELS
from meshcore.resources.kinds.alert_rule import SIGNAL_UNITS, alert_name, format_value, parse_threshold
from meshcore.resources.loader import load_documents

HEAD = "apiVersion: telemetry.mesh.io/v1beta1\nkind: AlertRule\nmetadata: {name: ratings-errors}\n"


def load(spec: str):
    return load_documents(HEAD + "spec:\n" + spec, "rule.yaml")


def errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load(spec)
    return {e.path: e.message for e in info.value.errors}


def test_a_full_rule_loads_as_written():
    [res] = load("""
  signal: error_rate
  match: {service: ratings}
  op: ">"
  threshold: 5%
  for: 1m
  severity: critical
  summary: "{service} fails {value}"
  description: "over {threshold} for {for}"
  labels: {team: ratings}
  annotations: {runbook_url: "https://runbooks.example/{service}"}
""")
    assert res.kind == "AlertRule" and res.api_version == "telemetry.mesh.io/v1beta1"
    assert res.spec["threshold"] == "5%" and res.spec["match"] == {"service": "ratings"}


def test_every_problem_is_reported_with_its_field_path():
    errs = errors("""
  signal: error_rates
  op: "=="
  threshold: fast
  for: soon
  severity: page
  labels: {severity: high, "bad-name": x}
""")
    assert "did you mean \"error_rate\"" in errs["spec.signal"]
    assert "spec.op" in errs and "spec.severity" in errs
    assert "not a duration" in errs["spec.for"]
    assert "label names must match" in errs['spec.labels["bad-name"]']


def test_cross_field_checks_name_the_signal():
    errs = errors("""
  signal: p99_ms
  match: {node: n1}
  op: ">"
  threshold: 5%
  summary: "{service} is slow on {node}"
  labels: {severity: high}
""")
    assert "signal p99_ms" in errs["spec.threshold"]
    assert 'has no label "node"' in errs['spec.match["node"]']
    assert "unknown placeholder {node}" in errs["spec.summary"]
    assert "use spec.severity" in errs['spec.labels["severity"]']


def test_required_fields_unless_disabled():
    errs = errors("  severity: info\n")
    assert set(errs) >= {"spec.signal", "spec.op", "spec.threshold"}
    [res] = load("  disabled: true\n")
    assert res.spec == {"disabled": True}


@pytest.mark.parametrize("signal,written,value", [
    ("error_rate", "5%", 0.05), ("error_rate", 0.2, 0.2), ("edge_error_rate", "0.5", 0.5),
    ("p99_ms", "500ms", 500.0), ("p99_ms", "1s", 1000.0), ("p99_ms", 250, 250.0),
    ("cert_expiry_seconds", "2h", 7200.0), ("ca_root_expiry_seconds", "30d", 30 * 86400.0),
    ("policy_denied", "1/s", 1.0), ("policy_denied", "30/m", 0.5), ("proxy_out_of_sync", 0, 0.0),
    ("policy_denied_by_caller", "6/m", 0.1), ("gateway_connection_error_rate", "10%", 0.1),
    ("version_edge_p99_ms", "1s", 1000.0), ("gateway_bytes_rate", "1000/s", 1000.0),
])
def test_thresholds_in_the_signals_unit(signal, written, value):
    assert parse_threshold(signal, written) == pytest.approx(value)


def test_every_signal_a_rule_may_name_has_a_unit():
    # the schema accepts any signal of SIGNAL_LABELS: each must have a unit, or its threshold cannot be read
    assert set(SIGNAL_UNITS) == set(SIGNAL_LABELS)


@pytest.mark.parametrize("signal,written", [("error_rate", 5), ("error_rate", "5ms"), ("p99_ms", "5%"),
                                            ("request_rate", "-1"), ("cert_expiry_seconds", True)])
def test_bad_thresholds_say_what_is_accepted(signal, written):
    with pytest.raises(ValueError, match="must be"):
        parse_threshold(signal, written)


def test_names_and_values_for_operators():
    assert alert_name("high-error-rate") == "HighErrorRate"
    assert alert_name("p99-2") == "P992"
    assert format_value("error_rate", 0.073) == "7.3%"
    assert format_value("cert_expiry_seconds", 5400) == "1h30m"
    assert format_value("p99_ms", 1234.0) == "1234ms"


def test_an_alert_rule_changes_no_proxy_config():
    """AlertRule is evaluated by the control plane, not applied by any xDS plugin: every proxy's built
    config (and so its content-hash version) is identical with and without AlertRules in the snapshot."""
    from pathlib import Path

    from meshcore.catalog.files import FileCatalogSource
    from meshcore.observe.default_rules import default_rule_resources
    from meshcore.snapshot import MeshSnapshot, ProxyInfo
    from meshcore.compose import build_proxy
    from meshcore.xds.cache import ProxySnapshot

    catalog = FileCatalogSource(Path(__file__).resolve().parents[2] / "examples/bookinfo/consul.d").poll(None, 0).catalog
    rules = [*load("  signal: error_rate\n  op: \">\"\n  threshold: 1%\n"), *default_rule_resources()]
    plain, with_rules = MeshSnapshot.build(catalog, ()), MeshSnapshot.build(catalog, rules)
    assert plain.hash != with_rules.hash  # the rules are part of the snapshot ...
    nodes = sorted({i.node for i in catalog.instances})
    assert nodes
    for node in nodes:  # ... but no proxy's configuration changes
        proxy = ProxyInfo(node=node, secrets_dir="/s")
        assert ProxySnapshot.of(build_proxy(plain, proxy)).version == ProxySnapshot.of(build_proxy(with_rules, proxy)).version
