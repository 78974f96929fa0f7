"""What the collector reads from one proxy's Envoy stats (pure parsing, no IO).

On top of the outbound edge counters :mod:`meshcore.observe.graph` picks, the collector needs, per proxy:

* the inbound HTTP connection managers' request counters and latency histograms (stat prefix
  ``inbound_<instance id>``): what a service received, for a service no mesh caller reports on;
* per outbound cluster ``outbound_<dst>|<src>[|subset]``: circuit-breaker overflow
  (``upstream_rq_pending_overflow`` + ``upstream_cx_overflow``) and retry exhaustion
  (``upstream_rq_retry_limit_exceeded``);
* per outbound cluster and endpoint (``track_cluster_stats.per_endpoint_stats``, on for every mesh upstream
  cluster): ``envoy_cluster_endpoint_rq_total`` and ``..._rq_error`` (5xx answers and resets) labelled
  ``envoy_endpoint_address``: which instance answered, the graph's versions and datacenters;
* per mesh gateway cluster (``mesh_gateway:service:<svc>.<dc>``, ``mesh_gateway:datacenter:<dc>``): the
  connections it opened (``upstream_cx_total``), the ones that failed (``upstream_cx_connect_fail`` and
  ``upstream_cx_none_healthy``) and the bytes it carried (``upstream_cx_rx_bytes_total`` + ``_tx_``). A
  service cluster's stats are named by its ``alt_stat_name`` ``mesh_gateway_service_<svc>|<dc>[|<subset>]``
  (no dot, so Envoy's tag extraction keeps it whole: ``envoy_cluster_upstream_cx_total{envoy_cluster_name=
  "mesh_gateway_service_<svc>|<dc>"}``). A gateway still on a configuration without it (the dot defeats the tag
  extraction: ``envoy_cluster_<dc>_upstream_cx_total{envoy_cluster_name="mesh_gateway_service_<svc>"}``) is
  read too;
* per inbound connection manager, the requests the RBAC filters denied. Envoy 1.40 reports a filter with
  ``rules_stat_prefix="authz.<stage>."`` (the constant ``deny`` and ``allow`` stages; their rules come per
  route) as ``envoy_http_rbac_<stage>_denied{envoy_rbac_http_prefix="authz",
  envoy_http_conn_manager_prefix="inbound_<id>"}``; per-rule counters (``..._policy_<ns>_<name>_<i>__denied``)
  and shadow counters are left out so that a denial is counted once, by the stage that denied it.
  TCP chains' ``tcp.<prefix>.authz.<stage>.rbac.denied`` is read with or without Envoy's tag extraction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from ..errors import StatsUnparsable
from .graph import CLUSTER_PREFIXES, LISTENER_PREFIX, EnvoyStats, _Series, _take, parse_envoy_prometheus

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
    # (source service, destination service, deciding policy) -> requests denied (the agent's counts per caller)
    denied_by: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # outbound cluster -> {endpoint host:port -> requests it answered (total, errors; no histogram)}
    endpoints: dict[str, dict[str, _Series]] = field(default_factory=dict)
    # (service or "" for a datacenter route, datacenter) -> a mesh gateway's connections (total: attempts,
    # errors: failed ones) towards it
    gateway: dict[tuple[str, str], _Series] = field(default_factory=dict)
    gateway_bytes: dict[tuple[str, str], float] = field(default_factory=dict)  # the same routes: bytes both ways


def _is_rbac_denial(name: str, labels: dict[str, str]) -> bool:
    if not name.startswith("envoy_http_rbac_") or not name.endswith("_denied"):
        return False
    if name.endswith("__denied") or "shadow" in name:  # per-rule counters, shadow (dry-run) engines
        return False
    return "envoy_rbac_http_prefix" in labels or name == "envoy_http_rbac_denied"


# Metric families the collector reads (every name above starts with one of these). prometheus_client's
# parser costs about 0.1 ms per sample and a VM's Envoy exposes thousands of samples, most of them about
# things the collector never reads: lines of other families are dropped before parsing.
# The agent's per-caller denials (meshcore.agent._series.policy_denied_family: from Envoy's access log, or with
# source_service "unknown" from its RBAC counters); absent when the collector fell back to Envoy's own stats.
DENIED_BY_CALLER = "meshcore_policy_denied"
_READ_PREFIXES = ("envoy_cluster_upstream_rq", "envoy_cluster_upstream_cx_overflow", "envoy_http_downstream_rq", "envoy_http_rbac_",
                  "envoy_tcp_", "envoy_cluster_endpoint_rq_total", "envoy_cluster_endpoint_rq_error",
                  DENIED_BY_CALLER)
# A mesh gateway's connection counters (read for its own clusters only: every cluster has them).
_GATEWAY_CX = ("upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_none_healthy", "upstream_cx_rx_bytes_total",
               "upstream_cx_tx_bytes_total")
_GATEWAY_CLUSTER = 'envoy_cluster_name="mesh_gateway'
GATEWAY_PREFIXES = ("mesh_gateway:", "mesh_gateway_")


def relevant_lines(text: str) -> str:
    """``text`` with only the samples (and ``# TYPE``/``# HELP`` lines) of the families the collector reads."""
    kept = []
    gateway = _GATEWAY_CLUSTER in text  # a mesh gateway's text (a sidecar's has none: no per-line search)
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith(_READ_PREFIXES):
            kept.append(line)
        elif gateway and _GATEWAY_CLUSTER in line and line.startswith("envoy_cluster_"):
            kept.append(line)  # its TYPE line is left out: the sample is read as untyped, by its own name
    return "\n".join(kept) + "\n"


def gateway_route(cluster: str, sample_name: str) -> tuple[str, str, str] | None:
    """``(service or "", datacenter, counter)`` of a mesh gateway cluster's connection sample, None for others.

    ``mesh_gateway_service_<svc>|<dc>[|<subset>]`` (the clusters' ``alt_stat_name``), ``mesh_gateway:service:<svc>.<dc>``
    (or, from a gateway configured before the ``alt_stat_name``, Envoy's ``mesh_gateway_service_<svc>`` with the
    datacenter moved into the sample name, ``envoy_cluster_<dc>_upstream_cx_total``) and
    ``mesh_gateway:datacenter:<dc>``."""
    counter = next((c for c in _GATEWAY_CX if sample_name.endswith(c) or sample_name.endswith(c + "_total")), "")
    if not counter or not cluster.startswith(GATEWAY_PREFIXES):
        return None
    kind, _, rest = cluster[len("mesh_gateway:"):].partition(cluster[len("mesh_gateway")])
    middle = sample_name[len("envoy_cluster_"):].rsplit(counter, 1)[0].rstrip("_")
    if kind == "datacenter" and rest and not middle:
        return "", rest, counter
    if kind == "service" and rest and "." not in rest and "|" in rest:  # <svc>|<dc>[|<subset>]
        service, dc = rest.split("|")[:2]
        return (service, dc, counter) if service and dc and not middle else None
    if kind == "service" and rest:
        service, dot, dc = rest.split("|", 1)[0].partition(".")  # a subset's cluster: <svc>.<dc>|<subset>
        if dot and dc and not middle:
            return service, dc, counter
        if not dot and middle:  # tag extraction stopped at the dot: the datacenter (and a subset's name, after
            return service, middle, counter  # a "_": see gateway_routes) is in the sample's name
    return None


# One sample line of Envoy's exposition format: ``name{label="value",...} value [timestamp]``.
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:\s*[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\]|\\.)*"\s*,?)*)\s*\})?'
                     r'\s+(\S+)(?:\s+-?[0-9]+)?\s*$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


_Unparsable = StatsUnparsable  # a line the focused parser does not read


def _samples(text: str) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """``(family name, sample name, labels, value)`` of every sample in ``text`` (relevant lines only), named
    as :func:`prometheus_client.parser.text_string_to_metric_families` names them: a counter family without
    its ``_total``, its samples with one (Envoy's ``..._rq_xx`` counter is read as ``..._rq_xx_total``), a
    sample outside its ``# TYPE``'s family an untyped one of its own. Raises :class:`_Unparsable` for what
    it does not read (anything but TYPE/HELP comments and well-formed sample lines)."""
    family, typ = "", "untyped"
    allowed: tuple[str, ...] = ("",)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) > 2 and parts[1] == "TYPE":
                if len(parts) < 4:
                    raise _Unparsable(line)
                family, typ = parts[2], parts[3]
                allowed = (family,) if typ in ("counter", "gauge") else (
                    family + "_count", family + "_sum", family + "_bucket") if typ == "histogram" else (
                    family + "_count", family + "_sum", family) if typ == "summary" else (family,)
            elif len(parts) > 2 and parts[1] == "HELP" and parts[2] != family:
                family, typ, allowed = parts[2], "untyped", (parts[2],)
            continue
        m = _SAMPLE.fullmatch(line)
        if m is None:
            raise _Unparsable(line)
        name, body, raw = m.groups()
        try:
            value = float(raw)
        except ValueError as exc:
            raise _Unparsable(line) from exc
        labels: dict[str, str] = {}
        if body:
            for key, v in _LABEL.findall(body):
                labels[key] = _UNESCAPE.sub(lambda e: _ESCAPES.get(e[1], "\\" + e[1]), v) if "\\" in v else v
        if name not in allowed:  # prometheus_client: a new, untyped family of one sample
            family, typ, allowed = "", "untyped", ("",)
            yield name, name, labels, value
        elif typ == "counter":
            yield (family[:-6], name, labels, value) if family.endswith("_total") else (family, name + "_total", labels, value)
        else:
            yield family, name, labels, value


def _parsed_samples(text: str) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """Like :func:`_samples`, through prometheus_client's parser (what it stands for; used when it cannot read ``text``)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield family.name, sample.name, sample.labels, sample.value


def parse_proxy_stats(text: str) -> ProxyStats:
    """Parse one ``/stats/prometheus`` text (or an agent's merged ``/metrics``, which contains it).

    Only the families the collector reads are parsed (:func:`relevant_lines`), in one pass, by a parser of
    Envoy's sample lines (prometheus_client's costs about 0.1 ms per sample, and the graph's picks took a
    second pass); the result is the same as :func:`parse_proxy_stats_slow`'s, which reads what it does not."""
    text = relevant_lines(text)
    try:
        return _stats_from(list(_samples(text)))
    except _Unparsable:
        return _stats_from(list(_parsed_samples(text)))


def parse_proxy_stats_slow(text: str) -> ProxyStats:
    """:func:`parse_proxy_stats` with prometheus_client's parser and the graph's own (the reference it is tested against)."""
    text = relevant_lines(text)
    stats = _stats_from(list(_parsed_samples(text)), graph=False)
    stats.graph = parse_envoy_prometheus(text)
    return stats


def _stats_from(samples: Iterable[tuple[str, str, dict[str, str], float]], graph: bool = True) -> ProxyStats:
    stats = ProxyStats()
    clusters, listeners = stats.graph.clusters, stats.graph.listeners
    for family, sample_name, labels, value in samples:
        # Counters: match on the family's name (the parser gives every counter sample a "_total" suffix).
        name = family if family and sample_name.startswith(family) and sample_name[len(family):] in ("", "_total") \
            else sample_name
        if sample_name in (DENIED_BY_CALLER, DENIED_BY_CALLER + "_total"):
            key = (labels.get("source_service", ""), labels.get("destination_service", ""), labels.get("policy", ""))
            stats.denied_by[key] = stats.denied_by.get(key, 0.0) + value
            continue
        cluster = labels.get("envoy_cluster_name", "")
        if cluster:
            if not cluster.startswith(CLUSTER_PREFIXES) or "|" not in cluster:
                route = gateway_route(cluster, sample_name)
                if route is not None:
                    series = stats.gateway.setdefault(route[:2], _Series())
                    if route[2].endswith("_bytes_total"):
                        stats.gateway_bytes[route[:2]] = stats.gateway_bytes.get(route[:2], 0.0) + value
                    elif route[2] == "upstream_cx_connect_fail":
                        series.errors += value
                    else:  # an attempt: opened, or refused for want of a healthy endpoint (also an error)
                        series.total += value
                        if route[2] == "upstream_cx_none_healthy":
                            series.errors += value
                continue
            address = labels.get("envoy_endpoint_address")
            if address is not None:
                if sample_name.startswith("envoy_cluster_endpoint_rq_"):
                    endpoint = stats.endpoints.setdefault(cluster, {}).setdefault(address, _Series())
                    if sample_name == "envoy_cluster_endpoint_rq_total":
                        endpoint.total = value
                    elif sample_name in ("envoy_cluster_endpoint_rq_error", "envoy_cluster_endpoint_rq_error_total"):
                        endpoint.errors = value
                continue
            if graph:  # as graph.parse_envoy_prometheus picks them
                _take(clusters.setdefault(cluster, _Series()), "envoy_cluster_upstream_rq", sample_name, labels, value)
            if name in OVERFLOW:
                stats.overflow[cluster] = stats.overflow.get(cluster, 0.0) + value
            elif name == RETRY_EXHAUSTED:
                stats.retry_exhausted[cluster] = value
            continue
        hcm = labels.get("envoy_http_conn_manager_prefix", "")
        if graph and "envoy_http_conn_manager_prefix" in labels and hcm.startswith(LISTENER_PREFIX):
            _take(listeners.setdefault(hcm, _Series()), "envoy_http_downstream_rq", sample_name, labels, value)
        if hcm.startswith(INBOUND_PREFIX):
            if _is_rbac_denial(name, labels):
                stats.denied[hcm] = stats.denied.get(hcm, 0.0) + value
            else:
                _take(stats.inbound.setdefault(hcm, _Series()), "envoy_http_downstream_rq", sample_name, labels, value)
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


__all__ = ["GATEWAY_PREFIXES", "ProxyStats", "counter_delta", "gateway_route", "parse_proxy_stats", "parse_proxy_stats_slow"]
