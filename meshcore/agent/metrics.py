"""The VM's one Prometheus endpoint: the agent's own metrics merged with its Envoy's.

``GET /metrics`` answers, per scrape, the agent's registry (SVID and node certificate expiry,
SVID renewals, Envoy restarts, process metrics) followed by Envoy's ``/stats/prometheus`` fetched
from the admin address with a short timeout. When Envoy does not answer, the agent's part is served
alone with ``meshcore_envoy_up 0``, so a scrape never fails because of Envoy.

The agent's state is read through a callable returning :class:`AgentFacts` (no reference to the
agent object here), so this module is testable without an agent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshcore.agent._net import admin_get, split_host_port
from meshcore.agent._access_log import PolicyCounts
from meshcore.agent._series import edge_families, policy_audited_family, policy_denied_family, usage_families
from meshcore.errors import AgentError

__all__ = ["AgentFacts", "AgentMetrics", "MetricsServer", "merge_exposition", "DEFAULT_METRICS_PORT"]

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 15090
ENVOY_SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class AgentFacts:
    """What the agent exports at one instant."""

    node: str
    svids: dict[str, tuple[str, float]] = field(default_factory=dict)  # service -> (spiffe_id, not_after unix)
    node_expiry: float | None = None
    envoy_restarts: int = 0
    envoy_ready: bool = False
    envoy_pid: int | None = None  # for USE series (CPU, memory, fds from /proc)
    policy_log: PolicyCounts | None = None  # policy decisions per caller, when Envoy's access log is followed


class _FactsCollector:
    def __init__(self, facts: Callable[[], AgentFacts]):
        self._facts = facts

    def describe(self):
        return []

    def collect(self):
        f = self._facts()
        svid = GaugeMetricFamily("meshcore_agent_svid_expiry_timestamp_seconds",
                                 "Expiry (Unix time) of the SVID the agent holds for each local service.",
                                 labels=["node", "service", "spiffe_id"])
        for service, (spiffe_id, not_after) in sorted(f.svids.items()):
            svid.add_metric([f.node, service, spiffe_id], not_after)
        yield svid
        node = GaugeMetricFamily("meshcore_agent_node_certificate_expiry_timestamp_seconds",
                                 "Expiry (Unix time) of this VM's node certificate.", labels=["node"])
        if f.node_expiry is not None:
            node.add_metric([f.node], f.node_expiry)
        yield node
        restarts = CounterMetricFamily("meshcore_agent_envoy_restarts",
                                       "Times the agent restarted Envoy (crash or configuration change).",
                                       labels=["node"])
        restarts.add_metric([f.node], f.envoy_restarts)
        yield restarts
        ready = GaugeMetricFamily("meshcore_agent_envoy_ready", "1 when Envoy answered its readiness check.",
                                  labels=["node"])
        ready.add_metric([f.node], 1.0 if f.envoy_ready else 0.0)
        yield ready
        following = GaugeMetricFamily("meshcore_agent_access_log_following",
                                      "1 when policy denials and audits are counted per caller from Envoy's "
                                      "JSON access log; 0: from its RBAC counters (source_service=unknown).",
                                      labels=["node"])
        following.add_metric([f.node], 1.0 if f.policy_log is not None else 0.0)
        yield following


class AgentMetrics:
    """The agent's registry: process metrics, state read at scrape time, SVID issuance counters."""

    def __init__(self, facts: Callable[[], AgentFacts], registry: CollectorRegistry | None = None):
        self.facts = facts
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_FactsCollector(facts))
        self.svid_issued = Counter("meshcore_agent_svids_issued",
                                   "SVIDs the agent obtained from the control plane, by service and reason "
                                   "(issue: first one, renewal: replacing a held one).",
                                   ["service", "reason"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def merge_exposition(own: bytes, envoy: str | None) -> bytes:
    """The agent's text, ``meshcore_envoy_up``, then Envoy's text (when it answered).

    Both are Prometheus text format with disjoint names (``meshcore_*``/``process_*``/``python_*``
    against ``envoy_*``), so their concatenation is one valid exposition."""
    parts = [own.rstrip(b"\n") + b"\n",
             b"# HELP meshcore_envoy_up 1 when the VM's Envoy answered this scrape's stats request.\n"
             b"# TYPE meshcore_envoy_up gauge\n",
             b"meshcore_envoy_up %d\n" % (1 if envoy is not None else 0)]
    if envoy:
        parts.append(envoy.rstrip("\n").encode() + b"\n")
    return b"".join(parts)


class _Families:
    def __init__(self, families: list):
        self._families = families

    def describe(self):
        return []

    def collect(self):
        return iter(self._families)


def derived_exposition(facts: AgentFacts, envoy: str | None, admin: str) -> bytes:
    """The agent's series computed per scrape from Envoy's stats and /proc: RED per edge, circuit
    breakers, retry exhaustion, USE, and policy denials and audits: per caller from the access log
    counts in ``facts.policy_log`` when there are any, else from Envoy's RBAC counters with
    ``source_service="unknown"``, never both (see docs/observability.md#metrics-reference)."""
    families = usage_families({"agent": os.getpid(), "envoy": facts.envoy_pid}, envoy)
    if envoy is not None:
        families += edge_families(envoy, fetch_envoy_limits(admin))
    log_counts = facts.policy_log
    if log_counts is not None:  # per caller, from the access log (also while Envoy does not answer)
        families += [policy_denied_family({}, (), log_counts.denied),
                     policy_audited_family({}, (), log_counts.audited)]
    elif envoy is not None:  # Envoy's RBAC counters: source_service="unknown"
        counters = fetch_envoy_counters(admin, "rbac|authz")
        families += [policy_denied_family(counters, facts.svids), policy_audited_family(counters, facts.svids)]
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


def _admin_json(admin: str, path: str, timeout: float = ENVOY_SCRAPE_TIMEOUT_S) -> dict | None:
    answer = admin_get(admin, path, timeout)
    if answer is None or answer[0] != 200:
        return None
    try:
        data = json.loads(answer[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def fetch_envoy_counters(admin: str, pattern: str) -> dict[str, float]:
    """Envoy's raw counter names and values matching ``pattern`` (``/stats?format=json&filter=``)."""
    data = _admin_json(admin, "/stats?format=json&filter=" + urllib.parse.quote(pattern)) or {}
    return {s["name"]: float(s["value"]) for s in data.get("stats", []) if "name" in s and "value" in s}


_THRESHOLD_FIELDS = {"max_connections": "connections", "max_pending_requests": "pending_requests",
                     "max_requests": "requests", "max_retries": "retries"}


def fetch_envoy_limits(admin: str) -> dict[str, dict[str, int]]:
    """DEFAULT-priority circuit-breaker thresholds per cluster (``/clusters?format=json``)."""
    data = _admin_json(admin, "/clusters?format=json") or {}
    out: dict[str, dict[str, int]] = {}
    for status in data.get("cluster_statuses", []):
        for t in (status.get("circuit_breakers") or {}).get("thresholds", []):
            if t.get("priority", "DEFAULT") == "DEFAULT":
                out[status["name"]] = {_THRESHOLD_FIELDS[k]: int(v) for k, v in t.items() if k in _THRESHOLD_FIELDS}
    # Envoy's stats name clusters with ':' as '_' (outbound:a|b -> outbound_a|b): answer both spellings.
    out.update({name.replace(":", "_"): v for name, v in list(out.items())})
    return out


def fetch_envoy_stats(admin: str, timeout: float = ENVOY_SCRAPE_TIMEOUT_S) -> str | None:
    """Envoy's ``/stats/prometheus`` text, or None when it does not answer in ``timeout``."""
    answer = admin_get(admin, "/stats/prometheus", timeout)
    if answer is None or answer[0] != 200:
        return None
    return answer[1].decode("utf-8", errors="replace")


class MetricsServer:
    """``GET /metrics`` (merged text) and ``GET /healthz`` on ``bind``; ``start()``/``stop()``."""

    def __init__(self, bind: str, metrics: AgentMetrics, envoy_admin: Callable[[], str]):
        self.bind = bind
        self.metrics = metrics
        self.envoy_admin = envoy_admin
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` actually bound (the port is chosen by the OS when ``bind`` says 0)."""
        if self._server is None:
            return ""
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def bound(self) -> tuple[str, int] | None:
        """``(host, port)`` actually bound (IPv6 without brackets); None when not serving."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def render(self) -> bytes:
        admin = self.envoy_admin()
        envoy = fetch_envoy_stats(admin)
        derived = derived_exposition(self.metrics.facts(), envoy, admin)
        return merge_exposition(self.metrics.exposition() + derived, envoy)

    def start(self) -> "MetricsServer":
        host, _, port_text = self.bind.rpartition(":")
        if port_text != "0":  # port 0 (the OS picks one) is for tests; split_host_port refuses it
            split_host_port(self.bind, what="--metrics-bind")
        host, port = host.strip("[]"), int(port_text)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = outer.render(), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    body, ctype, code = b"ok\n", "text/plain", 200
                else:
                    body, ctype, code = b"not found: try /metrics\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle(self):
                # A scraper that timed out and closed is one DEBUG line, not a traceback on stderr.
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
                    log.debug("metrics client %s went away before its answer was sent (%s)",
                              self.client_address[0], exc.strerror or exc)

            def log_message(self, fmt, *args):
                log.debug("metrics %s", fmt % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise AgentError(f"cannot serve metrics on {self.bind}: {exc}; pick a free --metrics-bind "
                             "(or 'off')") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
