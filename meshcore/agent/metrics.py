"""The VM's one Prometheus endpoint: the agent's own metrics merged with its Envoy's.

``GET /metrics`` answers, per scrape, the agent's registry (SVID and node certificate expiry,
SVID renewals, Envoy restarts, process metrics) followed by Envoy's ``/stats/prometheus`` fetched
from the admin address with a short timeout. When Envoy does not answer, the agent's part is served
alone with ``meshcore_envoy_up 0``, so a scrape never fails because of Envoy.

A scrape does no heavy work: Envoy's text is passed through as bytes, and the series the agent derives
from it (RED per edge, circuit breakers, policy decisions: :func:`derived_exposition`, which parses
megabytes of text on a large proxy) are computed off the scrape path by :class:`_DerivedCache`, from
the Envoy text the previous scrape read; a scrape serves the last result (one scrape behind; the first
scrape of a run computes inline). Envoy's circuit-breaker thresholds (``/clusters``) are re-read at most
every :data:`LIMITS_TTL_S`. ``GET /stats/prometheus`` passes Envoy's own text through unchanged: the
control plane's collector falls back to it when the merged endpoint does not answer in time.

The agent's state is read through a callable returning :class:`AgentFacts` (no reference to the
agent object here), so this module is testable without an agent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshcore.agent._net import admin_get, split_host_port
from meshcore.agent._access_log import PolicyCounts
from meshcore.agent._series import (edge_families, listener_connections_family, policy_audited_family,
                                    policy_denied_family, process_families)
from meshcore.errors import AgentError

__all__ = ["AgentFacts", "AgentMetrics", "MetricsServer", "merge_exposition", "DEFAULT_METRICS_PORT"]

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 15090
ENVOY_SCRAPE_TIMEOUT_S = 2.0
LIMITS_TTL_S = 30.0  # circuit-breaker thresholds change only with Envoy's configuration
DERIVED_MIN_INTERVAL_S = 1.0  # the derived series are recomputed at most this often, however often scrapes come


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


def merge_exposition(own: bytes, envoy: str | bytes | None) -> bytes:
    """The agent's text, ``meshcore_envoy_up``, then Envoy's text (when it answered).

    Both are Prometheus text format with disjoint names (``meshcore_*``/``process_*``/``python_*``
    against ``envoy_*``), so their concatenation is one valid exposition."""
    return b"".join(exposition_parts(own, envoy))


def exposition_parts(own: bytes, envoy: str | bytes | None) -> list[bytes]:
    """:func:`merge_exposition` as the pieces to write one after the other (Envoy's megabytes are not copied)."""
    parts = [own if own.endswith(b"\n") or not own else own + b"\n",
             b"# HELP meshcore_envoy_up 1 when the VM's Envoy answered this scrape's stats request.\n"
             b"# TYPE meshcore_envoy_up gauge\n",
             b"meshcore_envoy_up %d\n" % (1 if envoy is not None else 0)]
    if envoy:
        raw = envoy.encode() if isinstance(envoy, str) else envoy
        parts.append(raw)
        if not raw.endswith(b"\n"):
            parts.append(b"\n")
    return parts


class _Families:
    def __init__(self, families: list):
        self._families = families

    def describe(self):
        return []

    def collect(self):
        return iter(self._families)


def _exposition(families: list) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


def live_exposition(facts: AgentFacts) -> bytes:
    """The derived series that cost little, computed on every scrape: USE of the agent and Envoy from
    /proc, and policy decisions per caller from the access log counts (``facts.policy_log``)."""
    families = process_families({"agent": os.getpid(), "envoy": facts.envoy_pid})
    if facts.policy_log is not None:  # per caller, from the access log (also while Envoy does not answer)
        families += [policy_denied_family({}, (), facts.policy_log.denied),
                     policy_audited_family({}, (), facts.policy_log.audited)]
    return _exposition(families)


@dataclass(frozen=True)
class EnvoyDerived:
    """The series derived from one scrape of Envoy (the costly part: it parses all of Envoy's text):
    ``edges`` (RED per edge, circuit breakers, retries, listener connections) and ``rbac`` (policy
    decisions from Envoy's RBAC counters, ``source_service="unknown"``: served only while no access log
    is followed, so the two sources never mix)."""

    edges: bytes
    rbac: bytes


def envoy_derived(facts: AgentFacts, envoy: str, admin: str,
                  limits: dict[str, dict[str, int]] | None = None) -> EnvoyDerived:
    """:class:`EnvoyDerived` from Envoy's ``/stats/prometheus`` text; ``limits`` are the circuit-breaker
    thresholds (:func:`fetch_envoy_limits`; read now when None)."""
    edges = _exposition([listener_connections_family(envoy),
                         *edge_families(envoy, fetch_envoy_limits(admin) if limits is None else limits)])
    rbac = b""
    if facts.policy_log is None:
        counters = fetch_envoy_counters(admin, "rbac|authz")
        rbac = _exposition([policy_denied_family(counters, facts.svids), policy_audited_family(counters, facts.svids)])
    return EnvoyDerived(edges=edges, rbac=rbac)


def derived_exposition(facts: AgentFacts, envoy: str | None, admin: str,
                       limits: dict[str, dict[str, int]] | None = None) -> bytes:
    """The agent's series computed from Envoy's stats and /proc: RED per edge, circuit
    breakers, retry exhaustion, USE, and policy denials and audits: per caller from the access log
    counts in ``facts.policy_log`` when there are any, else from Envoy's RBAC counters with
    ``source_service="unknown"``, never both (see docs/observability.md#metrics-reference)."""
    live = live_exposition(facts)
    if envoy is None:
        return live
    derived = envoy_derived(facts, envoy, admin, limits)
    return live + derived.edges + (derived.rbac if facts.policy_log is None else b"")


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
    raw = fetch_envoy_stats_bytes(admin, timeout)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def fetch_envoy_stats_bytes(admin: str, timeout: float = ENVOY_SCRAPE_TIMEOUT_S) -> bytes | None:
    """Envoy's ``/stats/prometheus`` as it sent it (no decoding: a scrape passes it on), or None."""
    answer = admin_get(admin, "/stats/prometheus", timeout)
    if answer is None or answer[0] != 200:
        return None
    return answer[1]


class _DerivedCache:
    """The costly derived series (:func:`envoy_derived`) off the scrape path.

    :meth:`get` returns the live series (:func:`live_exposition`, cheap) and the newest Envoy-derived
    result at once and keeps this scrape's inputs for a worker thread, which (after :meth:`kick`)
    computes the next one (the newest inputs win: scrapes arriving while it works are folded into
    one computation), at most once per ``min_interval`` seconds. The first call, with nothing computed
    yet, computes inline so that a run's first scrape is complete. Circuit-breaker limits are re-read at
    most every ``limits_ttl`` seconds."""

    def __init__(self, compute: Callable[..., EnvoyDerived] = envoy_derived,
                 fetch_limits: Callable[[str], dict[str, dict[str, int]]] = fetch_envoy_limits,
                 limits_ttl: float = LIMITS_TTL_S, min_interval: float = DERIVED_MIN_INTERVAL_S):
        self._compute = compute
        self._min_interval = min_interval
        self._next_run = 0.0
        self._fetch_limits = fetch_limits
        self._limits_ttl = limits_ttl
        self._limits: tuple[str, float, dict[str, dict[str, int]]] | None = None  # admin, when read, limits
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._body: EnvoyDerived | None = None
        self._pending: tuple[AgentFacts, str, str] | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.computations = 0

    def get(self, facts: AgentFacts, envoy: bytes | None, admin: str) -> bytes:
        live = live_exposition(facts)
        if envoy is None:  # Envoy did not answer: no series derived from an older scrape of it either
            return live
        text = envoy.decode("utf-8", errors="replace")
        with self._lock:
            derived = self._body
            if derived is not None:
                self._pending = (facts, text, admin)  # computed once :meth:`kick` says the answer is out
        if derived is None:
            derived = self._run(facts, text, admin)
            with self._lock:
                if self._body is None:
                    self._body = derived
        return live + derived.edges + (derived.rbac if facts.policy_log is None else b"")

    def kick(self) -> None:
        """Start computing from the newest inputs. The server calls it after the scrape's answer is sent:
        computing while the answer is written would compete with the write for the interpreter."""
        with self._lock:
            if self._pending is None or self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="metrics-derive", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self, facts: AgentFacts, envoy: str, admin: str) -> EnvoyDerived:
        cached = self._limits
        if cached is None or cached[0] != admin or time.monotonic() - cached[1] >= self._limits_ttl:
            cached = (admin, time.monotonic(), self._fetch_limits(admin))
            self._limits = cached
        self.computations += 1
        return self._compute(facts, envoy, admin, cached[2])

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stopped:
                    if self._pending is None:
                        self._wake.wait()
                        continue
                    delay = self._next_run - time.monotonic()
                    if delay <= 0:
                        break
                    self._wake.wait(delay)  # back-to-back scrapes: at most one computation per min_interval
                if self._stopped:
                    return
                inputs, self._pending = self._pending, None
                if inputs is None:
                    continue
                self._next_run = time.monotonic() + self._min_interval
            try:
                body = self._run(*inputs)
            except Exception:  # noqa: BLE001 - keep serving the previous result; say why once per failure
                log.exception("computing the agent's derived metric series failed; serving the previous ones")
                continue
            with self._lock:
                self._body = body

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()


class MetricsServer:
    """``GET /metrics`` (merged text), ``GET /stats/prometheus`` (Envoy's, passed through) and
    ``GET /healthz`` on ``bind``; ``start()``/``stop()``."""

    def __init__(self, bind: str, metrics: AgentMetrics, envoy_admin: Callable[[], str]):
        self.bind = bind
        self.metrics = metrics
        self.envoy_admin = envoy_admin
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._derived = _DerivedCache()

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
        return b"".join(self.render_parts())

    def render_parts(self) -> list[bytes]:
        """One scrape's answer as pieces: the agent's series, the derived ones (cached), Envoy's text."""
        admin = self.envoy_admin()
        envoy = fetch_envoy_stats_bytes(admin)
        derived = self._derived.get(self.metrics.facts(), envoy, admin)
        return exposition_parts(self.metrics.exposition() + derived, envoy)

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
                    parts, ctype, code = outer.render_parts(), CONTENT_TYPE_LATEST, 200
                elif path == "/stats/prometheus":  # Envoy's own text: the collector's fallback
                    raw = fetch_envoy_stats_bytes(outer.envoy_admin())
                    parts, ctype, code = (([raw], CONTENT_TYPE_LATEST, 200) if raw is not None else
                                          ([b"envoy did not answer its admin /stats/prometheus\n"], "text/plain", 503))
                elif path == "/healthz":
                    parts, ctype, code = [b"ok\n"], "text/plain", 200
                else:
                    parts, ctype, code = [b"not found: try /metrics or /stats/prometheus\n"], "text/plain", 404
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(sum(len(p) for p in parts)))
                    self.end_headers()
                    for part in parts:
                        self.wfile.write(part)
                finally:
                    outer._derived.kick()

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
        self._derived.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
