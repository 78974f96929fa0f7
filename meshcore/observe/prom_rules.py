"""Alert rules as a Prometheus rule file, in PromQL over the series the mesh really exports (pure).

For operators who run Prometheus: the same rules meshcore evaluates itself, computed by Prometheus
from what it scrapes off every VM's agent (``/metrics``: the agent's series merged with its Envoy's
``/stats/prometheus``) and off the control plane (``/metrics``). Per signal:

=============================  ===========================================================================
signal                         series
=============================  ===========================================================================
request_rate, error_rate,      ``envoy_http_downstream_rq_total`` / ``_xx{envoy_response_code_class="5"}``
p99_ms                         / ``_time_bucket`` (milliseconds) of the callers' outbound listeners
                               (stat prefix ``outbound_<service>_<port>``): every request made to the
                               service, including those Envoy answered itself (fault aborts, no upstream)
edge_*                         ``envoy_cluster_upstream_rq_total`` / ``_xx`` / ``_time_bucket`` of the
                               outbound clusters ``outbound_<destination>|<source>[|<subset>]``
circuit_breaker_overflow       ``envoy_cluster_upstream_rq_pending_overflow`` + ``envoy_cluster_upstream_cx_overflow``
retry_exhausted                ``envoy_cluster_upstream_rq_retry_limit_exceeded``
policy_denied                  ``envoy_http_rbac_<stage>_denied{envoy_rbac_http_prefix="authz"}`` of the
                               inbound listeners ``inbound_<instance>``, joined with the control plane's
                               ``meshcore_service_instance_info{instance_id, service}`` to name the service
policy_denied_by_caller        ``meshcore_policy_denied_total{source_service, destination_service, policy}`` of
                               the agents (``source`` and ``service`` are those two labels renamed)
cert_expiry_seconds            ``meshcore_certificate_expiry_timestamp_seconds - time()``
cert_life_left_ratio           ``(expiry - time()) / meshcore_certificate_lifetime_seconds``
ca_root_expiry_seconds         ``meshcore_ca_root_expiry_timestamp_seconds{role="current"} - time()``
proxy_out_of_sync              ``meshcore_proxy_out_of_sync`` (control plane)
metrics_unreachable            ``1 - up`` (Prometheus' own scrapes; ``node`` is the scrape ``instance``)
thread_restarts                ``increase(meshcore_thread_restarts_total[window])`` (control plane)
resources_rejected,            ``meshcore_resources_rejected`` / ``meshcore_catalog_holding`` /
catalog_holding,               ``meshcore_resource_store_suspect`` (control plane; ``source`` is the control
store_suspect                  plane's scrape ``instance``)
=============================  ===========================================================================

Envoy reports cluster ``outbound:<dst>|<src>`` as ``outbound_<dst>|<src>`` (``:`` becomes ``_``);
``label_replace`` turns stat prefixes and cluster names into ``service``, ``source`` and ``destination``
labels, so alerts carry the same labels as meshcore's own. A rule's ``match`` becomes a regex on the
stat prefix or cluster name (or a label matcher), never a post-filter.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import yaml

from meshcore.resources.kinds.alert_rule import (
    FRACTION,
    MILLISECONDS,
    PER_SECOND,
    SECONDS,
    SIGNAL_UNITS,
    format_value,
)

from .alerts import Rule, format_duration_s

DEFAULT_WINDOW = "5m"
GROUP_NAME = "meshcore"

_SERVICE_PREFIX = "outbound_(.+)_[0-9]+"
_CLUSTER = r"outbound_([^|]+)\\|([^|]+)(\\|.*)?"


def _re(value: str) -> str:
    """``value`` as a literal inside an RE2 regex inside a PromQL double-quoted string."""
    escaped = re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def _str(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _service_listener(match: Mapping[str, str]) -> str:
    svc = match.get("service")
    return f'envoy_http_conn_manager_prefix=~"outbound_{_re(svc)}_[0-9]+"' if svc else \
        f'envoy_http_conn_manager_prefix=~"{_SERVICE_PREFIX}"'


def _by_service(inner: str) -> str:
    return f'label_replace({inner}, "service", "$1", "envoy_http_conn_manager_prefix", "{_SERVICE_PREFIX}")'


def _edge_cluster(match: Mapping[str, str], *, destination_key: str = "destination") -> str:
    dst = _re(match[destination_key]) if match.get(destination_key) else "[^|]+"
    src = _re(match["source"]) if match.get("source") else "[^|]+"
    return f'envoy_cluster_name=~"outbound_{dst}\\\\|{src}(\\\\|.*)?"'


def _by_edge(inner: str) -> str:
    step = f'label_replace({inner}, "destination", "$1", "envoy_cluster_name", "{_CLUSTER}")'
    return f'label_replace({step}, "source", "$2", "envoy_cluster_name", "{_CLUSTER}")'


def _by_cluster_service(inner: str) -> str:
    return f'label_replace({inner}, "service", "$1", "envoy_cluster_name", "{_CLUSTER}")'


def _matchers(match: Mapping[str, str], extra: str = "") -> str:
    parts = [extra] if extra else []
    parts += [f'{k}="{_str(v)}"' for k, v in sorted(match.items())]
    return "{" + ",".join(parts) + "}" if parts else ""


def signal_expr(signal: str, match: Mapping[str, str], window: str = DEFAULT_WINDOW) -> str:
    """PromQL computing ``signal`` (in meshcore's unit) per its labels, restricted to ``match``."""
    w = window
    if signal in ("request_rate", "error_rate", "p99_ms"):
        sel = _service_listener(match)
        total = f"sum by (service) ({_by_service(f'rate(envoy_http_downstream_rq_total{{{sel}}}[{w}])')})"
        if signal == "request_rate":
            return total
        if signal == "error_rate":
            errors = _by_service(f'rate(envoy_http_downstream_rq_xx{{{sel},envoy_response_code_class="5"}}[{w}])')
            return f"sum by (service) ({errors}) / {total}"
        buckets = _by_service(f"rate(envoy_http_downstream_rq_time_bucket{{{sel}}}[{w}])")
        return f"histogram_quantile(0.99, sum by (service, le) ({buckets}))"
    if signal in ("edge_request_rate", "edge_error_rate", "edge_p99_ms"):
        sel = _edge_cluster(match)
        total = f"sum by (source, destination) ({_by_edge(f'rate(envoy_cluster_upstream_rq_total{{{sel}}}[{w}])')})"
        if signal == "edge_request_rate":
            return total
        if signal == "edge_error_rate":
            errors = _by_edge(f'rate(envoy_cluster_upstream_rq_xx{{{sel},envoy_response_code_class="5"}}[{w}])')
            return f"sum by (source, destination) ({errors}) / {total}"
        buckets = _by_edge(f"rate(envoy_cluster_upstream_rq_time_bucket{{{sel}}}[{w}])")
        return f"histogram_quantile(0.99, sum by (source, destination, le) ({buckets}))"
    if signal in ("circuit_breaker_overflow", "retry_exhausted"):
        sel = _edge_cluster(match, destination_key="service")
        names = (("envoy_cluster_upstream_rq_pending_overflow", "envoy_cluster_upstream_cx_overflow")
                 if signal == "circuit_breaker_overflow" else ("envoy_cluster_upstream_rq_retry_limit_exceeded",))
        # One sum per counter, then added: rate() drops the name, so both counters of a cluster in one
        # selector would collide. Envoy emits both for every cluster, so neither side is ever missing.
        return " + ".join(f"sum by (service) ({_by_cluster_service(f'rate({n}{{{sel}}}[{w}])')})" for n in names)
    if signal == "policy_denied":
        denied = ('rate({__name__=~"envoy_http_rbac_.+_denied",__name__!~".+__denied",envoy_rbac_http_prefix="authz",'
                  f'envoy_http_conn_manager_prefix=~"inbound_.+"}}[{w}])')
        by_instance = f'label_replace({denied}, "instance_id", "$1", "envoy_http_conn_manager_prefix", "inbound_(.+)")'
        info = f"max by (instance_id, service) (meshcore_service_instance_info{_matchers(match)})"
        return f"sum by (service) ({by_instance} * on (instance_id) group_left (service) {info})"
    if signal == "policy_denied_by_caller":
        sel = ",".join(f'{key}="{_str(match[name])}"' for name, key in (("source", "source_service"),
                       ("service", "destination_service"), ("policy", "policy")) if match.get(name))
        renamed = f'rate(meshcore_policy_denied_total{{{sel}}}[{w}])'
        for label, raw in (("source", "source_service"), ("service", "destination_service")):
            renamed = f'label_replace({renamed}, "{label}", "$1", "{raw}", "(.*)")'
        return f"sum by (source, service, policy) ({renamed})"
    if signal == "cert_expiry_seconds":
        return f"min by (spiffe_id, node) (meshcore_certificate_expiry_timestamp_seconds{_matchers(match)}) - time()"
    if signal == "cert_life_left_ratio":
        m = _matchers(match)
        return (f"(min by (spiffe_id, node) (meshcore_certificate_expiry_timestamp_seconds{m}) - time()) "
                f"/ max by (spiffe_id, node) (meshcore_certificate_lifetime_seconds{m})")
    if signal == "ca_root_expiry_seconds":
        return 'min(meshcore_ca_root_expiry_timestamp_seconds{role="current"}) - time()'
    if signal == "proxy_out_of_sync":
        return f"max by (node) (meshcore_proxy_out_of_sync{_matchers(match)})"
    if signal == "metrics_unreachable":
        up = f'up{{instance="{_str(match["node"])}"}}' if match.get("node") else "up"
        return f'max by (node) (label_replace(1 - {up}, "node", "$1", "instance", "(.*)"))'
    if signal == "thread_restarts":
        return f"sum by (thread) (increase(meshcore_thread_restarts_total{_matchers(match)}[{w}]))"
    if signal in ("resources_rejected", "catalog_holding", "store_suspect"):
        series = {"store_suspect": "resource_store_suspect"}.get(signal, signal)
        sel = f'{{instance="{_str(match["source"])}"}}' if match.get("source") else ""
        return f'max by (source) (label_replace(meshcore_{series}{sel}, "source", "$1", "instance", "(.*)"))'
    raise ValueError(f"no PromQL for signal {signal!r}")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


_PROM_VALUE = {
    FRACTION: "{{ $value | humanizePercentage }}",
    MILLISECONDS: '{{ $value | printf "%.0f" }}ms',
    SECONDS: "{{ $value | humanizeDuration }}",
    PER_SECOND: '{{ $value | printf "%.3g" }}/s',
}


def _prom_template(text: str, signal: str) -> str:
    """A meshcore template (``{service}``, ``{value}``) as a Prometheus one (``{{ $labels.service }}``)."""
    literal = text.replace("{{", "\x00").replace("}}", "\x01")
    value = _PROM_VALUE.get(SIGNAL_UNITS.get(signal, ""), "{{ $value }}")

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name == "value":
            return value
        return "{{ $labels." + name + " }}"

    return re.sub(r"\{(\w+)\}", sub, literal).replace("\x00", "{").replace("\x01", "}")


def prometheus_rule(rule: Rule, window: str = DEFAULT_WINDOW) -> dict:
    """One Prometheus alerting rule (a mapping for the rule file) for a meshcore rule."""
    expr = f"{signal_expr(rule.signal, rule.match, window)} {rule.op} {_number(rule.threshold)}"
    fixed = {"threshold": format_value(rule.signal, rule.threshold), "for": format_duration_s(rule.for_seconds),
             "severity": rule.severity, "alertname": rule.alertname}

    def template(text: str) -> str:
        for k, v in fixed.items():
            text = text.replace("{" + k + "}", v)
        if "destination" in _labels_of(rule.signal):
            text = text.replace("{service}", "{destination}")
        elif "spiffe_id" in _labels_of(rule.signal):
            text = text.replace("{service}", "{spiffe_id}")
        return _prom_template(text, rule.signal)

    annotations = {k: template(v) for k, v in sorted(rule.annotations.items())}
    annotations["summary"] = template(rule.summary or f"{rule.signal} is {{value}} ({rule.op} {{threshold}})")
    if rule.description:
        annotations["description"] = template(rule.description)
    out: dict = {"alert": rule.alertname, "expr": expr}
    if rule.for_seconds:
        out["for"] = _prom_duration(rule.for_seconds)
    if rule.keep_firing_for_seconds:  # Prometheus >= 2.42
        out["keep_firing_for"] = _prom_duration(rule.keep_firing_for_seconds)
    out["labels"] = {**dict(sorted(rule.labels.items())), "severity": rule.severity}
    out["annotations"] = annotations
    return out


def _labels_of(signal: str) -> tuple[str, ...]:
    from .signals import SIGNAL_LABELS

    return SIGNAL_LABELS.get(signal, ())


def _prom_duration(seconds: float) -> str:
    """Prometheus durations take integer units (``90s``, ``1m30s``, ``250ms``)."""
    ms = int(round(seconds * 1000))
    if ms % 1000:
        return f"{ms}ms"
    return format_duration_s(ms // 1000)


NO_SERIES: frozenset[str] = frozenset({"version_edge_request_rate", "version_edge_error_rate", "version_edge_p99_ms",
                                      "gateway_connection_rate", "gateway_connection_error_rate", "gateway_bytes_rate"})
"""Signals no exported series carries: their rules are evaluated by meshcore only, never exported."""


def _exported(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in sorted(rules, key=lambda r: r.name) if not r.disabled and r.signal]


def rule_file(rules: Sequence[Rule], window: str = DEFAULT_WINDOW, group: str = GROUP_NAME) -> dict:
    """The rule file (``groups: [{name, rules}]``) for the enabled ``rules``, sorted by name (rules over a
    signal in :data:`NO_SERIES` are left out: :func:`render_rule_file` names them)."""
    enabled = [r for r in _exported(rules) if r.signal not in NO_SERIES]
    return {"groups": [{"name": group, "rules": [prometheus_rule(r, window) for r in enabled]}]}


def render_rule_file(rules: Sequence[Rule], window: str = DEFAULT_WINDOW, group: str = GROUP_NAME) -> str:
    header = ("# Prometheus alerting rules generated by `meshctl alerts export` from meshcore's AlertRules.\n"
              "# Scrape the control plane's /metrics and every VM agent's /metrics for these series.\n")
    for r in _exported(rules):
        if r.signal in NO_SERIES:
            header += f"# {r.name} ({r.signal}) is left out: no exported series carries it; meshcore evaluates it.\n"
    return header + yaml.safe_dump(rule_file(rules, window, group), sort_keys=False, width=1000, allow_unicode=True)


__all__ = ["DEFAULT_WINDOW", "NO_SERIES", "prometheus_rule", "render_rule_file", "rule_file", "signal_expr"]
