"""The agent's own series derived from one scrape of its Envoy (pure: text in, metric families out).

Per edge (``source_service`` -> ``destination_service``, the same mapping as :mod:`meshcore.observe.graph`):
an outbound listener's HTTP stats when the listener belongs to one local source (they also count what
Envoy answered itself: fault aborts, no healthy upstream), else the edge's clusters' upstream stats.
Circuit breakers, retries and connections always come from the clusters ``outbound:<dst>|<src>[|subset]``.
Policy denials and AUDIT matches come from this VM's JSON access log when the agent follows one
(:mod:`meshcore.agent._access_log`: with the caller), else from the RBAC filters' raw stat names on
inbound listeners (``/stats?format=json``: without it).
USE series of Envoy and the agent come from ``/proc`` (see :func:`proc_usage`).
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = ["edge_families", "policy_denied_family", "policy_audited_family", "usage_families", "process_families",
           "listener_connections_family", "proc_usage", "ProcUsage",
           "DEFAULT_LIMITS", "RESOURCES"]

CLUSTER_PREFIXES = ("outbound:", "outbound_")
LISTENER_PREFIX = "outbound_"
# Envoy's default circuit-breaker thresholds (DEFAULT priority), used when a cluster sets none.
DEFAULT_LIMITS = {"connections": 1024, "pending_requests": 1024, "requests": 1024, "retries": 3}
# resource -> the cluster gauge counting what is in use against that limit
RESOURCES = {"connections": "upstream_cx_active", "pending_requests": "upstream_rq_pending_active",
             "requests": "upstream_rq_active"}
_CLUSTER_COUNTERS = ("upstream_rq_pending_overflow", "upstream_cx_overflow", "upstream_rq_retry_limit_exceeded",
                     "upstream_cx_active", "upstream_rq_pending_active", "upstream_rq_active")


@dataclass
class _Requests:
    codes: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # "2xx" -> count
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))  # le (ms) -> cumulative
    sum_ms: float = 0.0

    def add(self, other: "_Requests") -> None:
        for code, v in other.codes.items():
            self.codes[code] += v
        for le, v in other.buckets.items():
            self.buckets[le] += v
        self.sum_ms += other.sum_ms


@dataclass
class _Scrape:
    listeners: dict[str, _Requests] = field(default_factory=lambda: defaultdict(_Requests))
    clusters: dict[str, _Requests] = field(default_factory=lambda: defaultdict(_Requests))
    cluster_values: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    listener_cx: dict[str, float] = field(default_factory=dict)


def _le(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf") else float(text)


# The only samples of Envoy's /stats/prometheus this module reads: outbound clusters' and listeners'
# request stats, the cluster counters above and the listeners' open connections. They are picked by
# name and read with one regular expression per line: prometheus_client's general parser costs about
# 0.1 ms per sample, and a VM's Envoy exposes thousands of samples, so parsing whole scrapes with it
# was most of an idle agent's CPU (the control plane's collector scrapes every few seconds).
_HISTOGRAMS = ("envoy_cluster_upstream_rq_time", "envoy_http_downstream_rq_time")
_WANTED_NAMES = frozenset(
    {"envoy_cluster_upstream_rq_xx", "envoy_http_downstream_rq_xx", "envoy_listener_downstream_cx_active"}
    | {f"envoy_cluster_{c}" for c in _CLUSTER_COUNTERS}
    | {h + suffix for h in _HISTOGRAMS for suffix in ("_bucket", "_sum")})
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?[ \t]+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value) if "\\" in value else value


_WANTED_FAMILIES = frozenset(n.removesuffix("_bucket").removesuffix("_sum") for n in _WANTED_NAMES)
_TYPE = "# TYPE "


def _wanted_blocks(text: str) -> list[str]:
    """The samples text of the wanted metric families: Envoy writes each family as one block under its ``# TYPE``
    line, and the blocks nobody wants (most of the text) are skipped whole, at the speed of ``str.find``; a text
    not grouped so is one block."""
    if not text.startswith(_TYPE):
        return [text]
    blocks = []
    pos = 0
    while pos < len(text):
        header_end = text.find("\n", pos)
        header_end = len(text) if header_end < 0 else header_end
        family = text[pos + len(_TYPE):header_end].partition(" ")[0]
        following = text.find("\n" + _TYPE, header_end)
        block_end = len(text) if following < 0 else following
        if family.removesuffix("_total") in _WANTED_FAMILIES:
            blocks.append(text[header_end + 1:block_end])
        pos = block_end + 1
    return blocks


def _samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of the wanted samples (``_total`` kept on the name, as Envoy writes it)."""
    for block in _wanted_blocks(text):
        yield from _wanted_lines(block.splitlines())


def _wanted_lines(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, str], float]]:
    for line in lines:
        if not line or line[0] == "#":
            continue
        cut = line.find("{")
        name = line[:cut] if cut >= 0 else line.partition(" ")[0]
        if name.removesuffix("_total") not in _WANTED_NAMES:
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        text = m.group("labels") or ""
        pairs = _LABEL.findall(text)
        yield name, (dict(pairs) if "\\" not in text else {k: _unescape(v) for k, v in pairs}), value


_last_parse: tuple[str, _Scrape, list[str]] | None = None
"""The last scrape's text, what it parsed to and its wanted blocks: one scrape feeds usage_families and
edge_families, and a scrape whose wanted blocks are the last one's (an idle proxy: no counter moved) is not parsed
again."""


def _parse(text: str) -> _Scrape:
    global _last_parse
    last = _last_parse
    if last is not None and last[0] is text:
        return last[1]
    blocks = _wanted_blocks(text)
    out = last[1] if last is not None and last[2] == blocks else _parse_blocks(blocks)
    _last_parse = (text, out, blocks)
    return out


def _parse_blocks(blocks: list[str]) -> _Scrape:
    out = _Scrape()
    for name, labels, value in (sample for block in blocks for sample in _wanted_lines(block.splitlines())):
        if "envoy_cluster_name" in labels:
            cluster = labels["envoy_cluster_name"]
            if not cluster.startswith(CLUSTER_PREFIXES) or "|" not in cluster:
                continue
            _take(out.clusters[cluster], "envoy_cluster_upstream_rq", name, labels, value)
            short = name[len("envoy_cluster_"):]
            if short.endswith("_total"):
                short = short[: -len("_total")]
            if short in _CLUSTER_COUNTERS:
                out.cluster_values[cluster][short] = value
        elif "envoy_http_conn_manager_prefix" in labels:
            prefix = labels["envoy_http_conn_manager_prefix"]
            if prefix.startswith(LISTENER_PREFIX):
                _take(out.listeners[prefix], "envoy_http_downstream_rq", name, labels, value)
        elif name == "envoy_listener_downstream_cx_active" and "envoy_listener_address" in labels:
            out.listener_cx[labels["envoy_listener_address"]] = value
    return out


def _take(req: _Requests, prefix: str, name: str, labels: Mapping[str, str], value: float) -> None:
    if name in (prefix + "_xx", prefix + "_xx_total") and labels.get("envoy_response_code_class"):
        req.codes[labels["envoy_response_code_class"] + "xx"] = value
    elif name == prefix + "_time_bucket":
        req.buckets[_le(labels.get("le", "+Inf"))] = value
    elif name == prefix + "_time_sum":
        req.sum_ms = value


def _mangle(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")


def _edge_of(cluster: str) -> tuple[str, str] | None:
    parts = cluster[len(CLUSTER_PREFIXES[0]):].split("|")
    return (parts[1], parts[0]) if len(parts) >= 2 and parts[0] and parts[1] else None


def _listener_dst(prefix: str) -> str:
    head, _, port = prefix[len(LISTENER_PREFIX):].rpartition("_")
    return head if port.isdigit() else ""


def _edges(scrape: _Scrape) -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cluster in scrape.clusters.keys() | scrape.cluster_values.keys():
        edge = _edge_of(cluster)
        if edge is not None and cluster not in edges[edge]:
            edges[edge].append(cluster)
    return edges


def edge_families(envoy_text: str, limits: Mapping[str, Mapping[str, int]] | None = None) -> list:
    """RED per edge, circuit-breaker overflow, retry exhaustion, connections and pool saturation.

    ``limits`` maps a cluster name (as Envoy's ``/clusters`` names it) to its thresholds by
    :data:`RESOURCES` key; missing ones are Envoy's defaults."""
    scrape = _parse(envoy_text)
    edges = _edges(scrape)
    sources_of: dict[str, set[str]] = defaultdict(set)
    for src, dst in edges:
        sources_of[dst].add(src)
    edge_labels = ["source_service", "destination_service"]
    requests = CounterMetricFamily("meshcore_requests", "Requests per edge by response code class (1xx..5xx), "
                                   "from the source's Envoy.", labels=[*edge_labels, "response_code_class"])
    duration = HistogramMetricFamily("meshcore_request_duration_seconds",
                                     "Request duration per edge, seen by the source's Envoy.", labels=edge_labels)
    overflow = CounterMetricFamily("meshcore_circuit_breaker_overflow", "Requests and connections shed by "
                                   "circuit breakers (upstream_rq_pending_overflow + upstream_cx_overflow).",
                                   labels=edge_labels)
    retries = CounterMetricFamily("meshcore_retry_exhausted", "Requests that ran out of retries "
                                  "(upstream_rq_retry_limit_exceeded).", labels=edge_labels)
    active = GaugeMetricFamily("meshcore_upstream_connections_active", "Open connections from the source's "
                               "Envoy to the destination.", labels=edge_labels)
    limit_f = GaugeMetricFamily("meshcore_circuit_breaker_limit", "Circuit-breaker threshold per edge and "
                                "resource (connections, pending_requests, requests).", labels=[*edge_labels, "resource"])
    saturation = GaugeMetricFamily("meshcore_circuit_breaker_saturation", "In use / limit (0..1) per edge and "
                                   "resource: 1 means the circuit breaker trips.", labels=[*edge_labels, "resource"])
    for (src, dst), clusters in sorted(edges.items()):
        labels = [src, dst]
        listeners = [p for p in scrape.listeners if _listener_dst(p) == _mangle(dst)]
        req = _Requests()
        for name in (listeners if listeners and len(sources_of[dst]) == 1 else clusters):
            req.add((scrape.listeners if name in scrape.listeners else scrape.clusters).get(name, _Requests()))
        for code in sorted(set(req.codes) | {"2xx", "5xx"}):
            requests.add_metric([*labels, code], req.codes.get(code, 0.0))
        bounds = sorted(req.buckets)
        if bounds:
            buckets = [("+Inf" if math.isinf(le) else _fmt(le / 1000.0), req.buckets[le]) for le in bounds]
            if not math.isinf(bounds[-1]):
                buckets.append(("+Inf", req.buckets[bounds[-1]]))
            duration.add_metric(labels, buckets, req.sum_ms / 1000.0)
        values = [scrape.cluster_values.get(c, {}) for c in clusters]
        overflow.add_metric(labels, sum(v.get("upstream_rq_pending_overflow", 0) + v.get("upstream_cx_overflow", 0)
                                        for v in values))
        retries.add_metric(labels, sum(v.get("upstream_rq_retry_limit_exceeded", 0) for v in values))
        active.add_metric(labels, sum(v.get("upstream_cx_active", 0) for v in values))
        for resource, gauge in RESOURCES.items():
            limit = sum((limits or {}).get(c, {}).get(resource, DEFAULT_LIMITS[resource]) for c in clusters)
            used = sum(v.get(gauge, 0) for v in values)
            limit_f.add_metric([*labels, resource], limit)
            saturation.add_metric([*labels, resource], used / limit if limit else 0.0)
    return [requests, duration, overflow, retries, active, limit_f, saturation]


def _fmt(value: float) -> str:
    return repr(float(value))


# HTTP: the constant stages' counters (rules per route): ALLOW's stage total, DENY's per-rule counters
# (one DENY stage holds every DENY policy, so the rule names the policy; its stage total is left out).
_HTTP_RBAC = re.compile(r"^http\.inbound_(?P<id>[^.]+)\.rbac\.authz\.(?P<label>allow|deny\.policy\..+)\.denied$")
_TCP_RBAC = re.compile(r"^tcp\.inbound_(?P<id>[^.]+)\.authz\.(?P<label>.+)\.rbac\.denied$")
# The HTTP AUDIT stage's per-rule counters (action LOG; Envoy counts a match as "allowed" by that rule).
# Envoy's network RBAC filter keeps no per-rule counters: TCP audits are not counted per policy.
_HTTP_AUDIT = re.compile(r"^http\.inbound_(?P<id>[^.]+)\.rbac\.authz\.audit\.policy\.(?P<rule>.+)\.allowed$")
_RULE_INDEX = re.compile(r"\[\d+\]$")
ALLOW_NO_MATCH = "allow/no-rule-matched"
UNKNOWN_SOURCE = "unknown"


def _policy(label: str) -> str | None:
    if label == "allow":
        return ALLOW_NO_MATCH
    if label.startswith("deny.policy.") and label.endswith("]"):  # HTTP: a DENY rule <ns>/<name>[<i>]
        return _RULE_INDEX.sub("", label[len("deny.policy."):])
    if label.startswith("deny."):  # TCP: one filter per DENY policy, deny.<ns>.<name>
        ns, _, name = label[len("deny."):].partition(".")
        return f"{ns}/{name}" if name else None
    return None  # audit (LOG never denies) or a per-rule counter


def service_of(instance_id: str, services: Iterable[str]) -> str:
    """The local service an inbound listener's instance id belongs to (``reviews-v2`` -> ``reviews``)."""
    for s in sorted(services, key=len, reverse=True):
        if instance_id == s or instance_id.startswith(s + "-"):
            return s
    return instance_id


def _stats_totals(stats: Mapping[str, float], services: list[str], kind: str) -> dict[tuple[str, str], float]:
    """(destination service, policy) -> count from Envoy's raw RBAC counter names."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for name, value in stats.items():
        if not value:  # every inbound HTTP listener has the ALLOW stage's counters, most at 0: no series for those
            continue
        if kind == "denied":
            m = _HTTP_RBAC.match(name) or _TCP_RBAC.match(name)
            if not m:
                continue
            policy = _policy(m.group("label"))
        else:
            m = _HTTP_AUDIT.match(name)
            policy = _RULE_INDEX.sub("", m.group("rule")) if m else None
        if m and policy is not None:
            totals[(service_of(m.group("id"), services), policy)] += value
    return totals


def _policy_family(name: str, help_text: str, kind: str, stats: Mapping[str, float], services: Iterable[str],
                   from_log: Mapping[tuple[str, str, str], float] | None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=["source_service", "destination_service", "policy"])
    if from_log is not None:
        for (src, dst, policy), count in sorted(from_log.items()):
            family.add_metric([src, dst, policy], count)
        return family
    for (dst, policy), total in sorted(_stats_totals(stats, list(services), kind).items()):
        family.add_metric([UNKNOWN_SOURCE, dst, policy], total)
    return family


def policy_denied_family(stats: Mapping[str, float], services: Iterable[str],
                         from_log: Mapping[tuple[str, str, str], float] | None = None) -> CounterMetricFamily:
    """``meshcore_policy_denied_total{source_service, destination_service, policy}``.

    One source or the other, never both, so ``sum()`` over the series is the number of denials:
    with ``from_log`` (``{(source, destination, policy): count}`` counted from this VM's JSON access
    log since the agent started following it) those counts, each with its caller; without it Envoy's
    RBAC counters (``stats``: raw names from ``/stats?format=json``), which do not know the caller,
    as ``source_service="unknown"``."""
    return _policy_family("meshcore_policy_denied", "Requests (HTTP) or connections (TCP) denied by "
                          "authorization policy at the destination's inbound listener.", "denied",
                          stats, services, from_log)


def policy_audited_family(stats: Mapping[str, float], services: Iterable[str],
                          from_log: Mapping[tuple[str, str, str], float] | None = None) -> CounterMetricFamily:
    """``meshcore_policy_audited_total{source_service, destination_service, policy}``: requests an
    AUDIT policy matched (they are not blocked by it); the same one-source rule as
    :func:`policy_denied_family`, from the audit stage's per-rule counters without a log."""
    return _policy_family("meshcore_policy_audited", "Requests (HTTP) or connections (TCP) an AUDIT "
                          "authorization policy matched at the destination's inbound listener.", "audited",
                          stats, services, from_log)


# --- USE: /proc ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcUsage:
    cpu_seconds: float
    resident_bytes: float
    open_fds: int


def proc_usage(pid: int, proc: str = "/proc") -> ProcUsage | None:
    """CPU seconds (user+system), resident memory and open file descriptors of ``pid``; None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{proc}/{pid}/statm") as f:
            statm = f.read().split()
        fds = len(os.listdir(f"{proc}/{pid}/fd"))
    except (OSError, IndexError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; utime, stime are fields 14, 15
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return ProcUsage(cpu_seconds=cpu, resident_bytes=int(statm[1]) * os.sysconf("SC_PAGE_SIZE"), open_fds=fds)


def usage_families(pids: Mapping[str, int | None], envoy_text: str | None) -> list:
    """USE of each process (``{"agent": pid, "envoy": pid}``) and Envoy's open downstream connections."""
    return [*process_families(pids), listener_connections_family(envoy_text)]


def process_families(pids: Mapping[str, int | None]) -> list:
    """CPU, resident memory and open descriptors of each process (``{"agent": pid, "envoy": pid}``), from /proc."""
    cpu = CounterMetricFamily("meshcore_process_cpu_seconds", "CPU time (user + system) of the VM's mesh "
                              "processes.", labels=["process"])
    rss = GaugeMetricFamily("meshcore_process_resident_memory_bytes", "Resident memory of the VM's mesh processes.",
                            labels=["process"])
    fds = GaugeMetricFamily("meshcore_process_open_fds", "Open file descriptors of the VM's mesh processes.",
                            labels=["process"])
    for process, pid in sorted(pids.items()):
        usage = proc_usage(pid) if pid else None
        if usage is None:
            continue
        cpu.add_metric([process], usage.cpu_seconds)
        rss.add_metric([process], usage.resident_bytes)
        fds.add_metric([process], usage.open_fds)
    return [cpu, rss, fds]


def listener_connections_family(envoy_text: str | None) -> GaugeMetricFamily:
    """Envoy's open downstream connections per listener address (parses ``envoy_text``)."""
    cx = GaugeMetricFamily("meshcore_downstream_connections_active", "Open connections on each of Envoy's "
                           "listeners (inbound mTLS and the apps' outbound listeners).", labels=["listener_address"])
    if envoy_text:
        for address, value in sorted(_parse(envoy_text).listener_cx.items()):
            cx.add_metric([address], value)
    return cx
