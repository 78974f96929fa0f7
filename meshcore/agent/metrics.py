"""The VM's one Prometheus endpoint: the agent's own metrics merged with its Envoy's.

``GET /metrics`` answers, per scrape, the agent's registry (SVID and node certificate expiry,
SVID renewals, Envoy restarts, process metrics) followed by Envoy's ``/stats/prometheus`` fetched
from the admin address with a short timeout. When Envoy does not answer, the agent's part is served
alone with ``meshcore_envoy_up 0``, so a scrape never fails because of Envoy.

The agent's state is read through a callable returning :class:`AgentFacts` (no reference to the
agent object here), so this module is testable without an agent.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshcore.agent._net import split_host_port
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


class AgentMetrics:
    """The agent's registry: process metrics, state read at scrape time, SVID issuance counters."""

    def __init__(self, facts: Callable[[], AgentFacts], registry: CollectorRegistry | None = None):
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


def fetch_envoy_stats(admin: str, timeout: float = ENVOY_SCRAPE_TIMEOUT_S) -> str | None:
    """Envoy's ``/stats/prometheus`` text, or None when it does not answer in ``timeout``."""
    try:
        with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            return resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


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
        return f"{host}:{port}"

    def render(self) -> bytes:
        return merge_exposition(self.metrics.exposition(), fetch_envoy_stats(self.envoy_admin()))

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
