"""What the collector reads from one proxy's Envoy stats (pure parsing, no IO).

On top of the outbound edge counters :mod:`meshcore.observe.graph` picks, the collector needs, per proxy:

* the inbound HTTP connection managers' request counters and latency histograms (stat prefix
  ``inbound_<instance id>``): what a service received, for a service no mesh caller reports on;
* per outbound cluster ``outbound_<dst>|<src>[|subset]``: circuit-breaker overflow
  (``upstream_rq_pending_overflow`` + ``upstream_cx_overflow``) and retry exhaustion
  (``upstream_rq_retry_limit_exceeded``);
* per inbound connection manager, the requests the RBAC filters denied. Envoy 1.40 reports a filter with
  ``rules_stat_prefix="authz.<stage>."`` (the constant ``deny`` and ``allow`` stages; their rules come per
  route) as ``envoy_http_rbac_<stage>_denied{envoy_rbac_http_prefix="authz",
  envoy_http_conn_manager_prefix="inbound_<id>"}``; per-rule counters (``..._policy_<ns>_<name>_<i>__denied``)
  and shadow counters are left out so that a denial is counted once, by the stage that denied it.
  TCP chains' ``tcp.<prefix>.authz.<stage>.rbac.denied`` is read with or without Envoy's tag extraction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .graph import CLUSTER_PREFIXES, EnvoyStats, _Series, _take, parse_envoy_prometheus

INBOUND_PREFIX = "inbound_"
OVERFLOW = ("envoy_cluster_upstream_rq_pending_overflow", "envoy_cluster_upstream_cx_overflow")
RETRY_EXHAUSTED = "envoy_cluster_upstream_rq_retry_limit_exceeded"
_TCP_DENIED = re.compile(r"^envoy_tcp_(?P<prefix>inbound_.+?)_authz_.+_rbac_denied$")


@dataclass
class ProxyStats:
    """One scrape of one proxy, reduced to the counters the collector turns into signals."""

    graph: EnvoyStats = field(default_factory=EnvoyStats)
    inbound: dict[str, _Series] = field(default_factory=dict)  # HCM prefix inbound_<id> -> requests
    overflow: dict[str, float] = field(default_factory=dict)  # outbound cluster -> circuit-breaker overflows
    retry_exhausted: dict[str, float] = field(default_factory=dict)  # outbound cluster -> retry limit hits
    denied: dict[str, float] = field(default_factory=dict)  # inbound prefix -> requests denied by RBAC


def _is_rbac_denial(name: str, labels: dict[str, str]) -> bool:
    if not name.startswith("envoy_http_rbac_") or not name.endswith("_denied"):
        return False
    if name.endswith("__denied") or "shadow" in name:  # per-rule counters, shadow (dry-run) engines
        return False
    return "envoy_rbac_http_prefix" in labels or name == "envoy_http_rbac_denied"


# Metric families the collector reads (every name above starts with one of these). prometheus_client's
# parser costs about 0.1 ms per sample and a VM's Envoy exposes thousands of samples, most of them about
# things the collector never reads: lines of other families are dropped before parsing.
_READ_PREFIXES = ("envoy_cluster_upstream_rq", "envoy_cluster_upstream_cx_overflow", "envoy_http_downstream_rq", "envoy_http_rbac_", "envoy_tcp_")


def relevant_lines(text: str) -> str:
    """``text`` with only the samples (and ``# TYPE``/``# HELP`` lines) of the families the collector reads."""
    kept = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith(_READ_PREFIXES):
            kept.append(line)
    return "\n".join(kept) + "\n"


def parse_proxy_stats(text: str) -> ProxyStats:
    """Parse one ``/stats/prometheus`` text (or an agent's merged ``/metrics``, which contains it)."""
    text = relevant_lines(text)
    stats = ProxyStats(graph=parse_envoy_prometheus(text))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # Counters: match on the family's name (the parser gives every counter sample a "_total" suffix).
            name = family.name if family.type == "counter" else sample.name
            labels, value = sample.labels, sample.value
            cluster = labels.get("envoy_cluster_name", "")
            if cluster:
                if not cluster.startswith(CLUSTER_PREFIXES) or "|" not in cluster:
                    continue
                if name in OVERFLOW:
                    stats.overflow[cluster] = stats.overflow.get(cluster, 0.0) + value
                elif name == RETRY_EXHAUSTED:
                    stats.retry_exhausted[cluster] = value
                continue
            hcm = labels.get("envoy_http_conn_manager_prefix", "")
            if hcm.startswith(INBOUND_PREFIX):
                if _is_rbac_denial(name, labels):
                    stats.denied[hcm] = stats.denied.get(hcm, 0.0) + value
                else:
                    _take(stats.inbound.setdefault(hcm, _Series()), "envoy_http_downstream_rq", sample.name, labels,
                          value)
                continue
            tcp = labels.get("envoy_tcp_prefix", "")
            if tcp.startswith(INBOUND_PREFIX) and name.startswith("envoy_tcp_authz_") and name.endswith("_rbac_denied"):
                stats.denied[tcp] = stats.denied.get(tcp, 0.0) + value
                continue
            m = _TCP_DENIED.match(name)
            if m:
                stats.denied[m["prefix"]] = stats.denied.get(m["prefix"], 0.0) + value
    return stats


def counter_delta(after: float, before: float | None) -> float:
    """Increase of a counter between two scrapes; a counter that is new, or went down (Envoy restarted),
    counts from 0."""
    if before is None or after < before:
        return after
    return after - before


__all__ = ["ProxyStats", "counter_delta", "parse_proxy_stats"]
