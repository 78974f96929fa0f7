"""The control plane's own Prometheus metrics (one registry per process, passed around).

The ADS server registers its xDS series (connected proxies, pushes/ACKs/NACKs by type) in the same
registry (``AdsServicer(registry=metrics.registry)``); certificate expiry is read from the CA at
scrape time (:meth:`ControlPlaneMetrics.watch_ca`), so it is never stale.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import ProcessCollector, PlatformCollector
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("meshcore.controlplane.metrics")

CONVERGENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.certs_issued = Counter(
            "meshcore_certificates_issued", "Certificates the CA signed or refused, by kind (node, workload).",
            ["kind", "outcome"], registry=self.registry)
        self.snapshots = Counter(
            "meshcore_mesh_snapshots", "Mesh snapshots built because the catalog or resources changed.",
            registry=self.registry)
        self.build_seconds = Histogram(
            "meshcore_config_build_seconds", "Time to build and publish one proxy's configuration.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=self.registry)
        self.build_errors = Counter(
            "meshcore_config_build_errors", "Proxy configurations rejected before publishing.", registry=self.registry)
        self.catalog_instances = Gauge(
            "meshcore_catalog_instances", "Service instances in the current catalog.", registry=self.registry)
        self.convergence_seconds = Histogram(
            "meshcore_convergence_seconds",
            "Time from a new configuration for a proxy (catalog or resource change) until that proxy ACKed it.",
            buckets=CONVERGENCE_BUCKETS, registry=self.registry)
        self.proxy_builds = Counter(
            "meshcore_proxy_builds", "Proxy configurations built (a change rebuilds only the proxies whose last "
            "build read something it changed; a new connection builds its proxy).", registry=self.registry)
        self.proxy_reassemblies = Counter(
            "meshcore_proxy_reassemblies", "Proxy configurations re-assembled without a build: only shared "
            "resources they use (a ClusterLoadAssignment, an upstream cluster) changed.", registry=self.registry)
        self.proxy_policy_reruns = Counter(
            "meshcore_proxy_policy_reruns", "Proxy configurations re-shaped without generation: only what the "
            "policy plugins read changed (a mesh-wide policy), so the plugins re-ran on the kept generator output.",
            registry=self.registry)
        self.proxy_pushes = Counter(
            "meshcore_proxy_pushes", "Builds that changed the proxy's published version (so it was sent).",
            registry=self.registry)
        self.snapshot_seconds = Histogram(
            "meshcore_snapshot_update_seconds", "Time to make the next mesh snapshot from a (coalesced) change.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=self.registry)
        self.coalesced_changes = Histogram(
            "meshcore_coalesced_changes", "Source changes folded into one rebuild (bursts coalesced).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=self.registry)
        self.catalog_watch_errors = Counter(
            "meshcore_catalog_watch_errors", "Failed catalog reads (Consul or files); the watch retries.",
            registry=self.registry)
        self.store_watch_errors = Counter(
            "meshcore_resource_store_watch_errors", "Failed resource store reads; the watch retries.",
            registry=self.registry)
        self.thread_restarts = Counter(
            "meshcore_thread_restarts", "Background loops of the control plane that died and were restarted by "
            "the supervisor (each loop catches its own errors: any restart is a bug to report).", ["thread"],
            registry=self.registry)
        self.resources_rejected = Gauge(
            "meshcore_resources_rejected", "Stored resource documents left out of the mesh because they fail "
            "validation (meshctl status names them).", registry=self.registry)
        self.catalog_holding = Gauge(
            "meshcore_catalog_holding", "1 while the catalog source holds last good instances after a read that "
            "looked like lost data (an index reset or a drastic shrink), else 0.", registry=self.registry)
        self.store_suspect = Gauge(
            "meshcore_resource_store_suspect", "1 while the resource store looks like it lost resources (the last "
            "good generation is served; meshctl store status says what happened), else 0.", registry=self.registry)
        self._pending_lock = threading.Lock()
        self._pending: dict[str, float] = {}  # node -> monotonic time its current version was published

    # --- convergence -----------------------------------------------------------------------
    def config_published(self, node: str, since: float | None = None) -> None:
        """A new version for ``node`` is in the cache: start its convergence clock at ``since``
        (``time.monotonic()``, default now); the clock of an older, unACKed version keeps running."""
        with self._pending_lock:
            self._pending.setdefault(node, time.monotonic() if since is None else since)

    def config_synced(self, node: str) -> None:
        """``node`` ACKed its current version: observe the time since it was published (once per version)."""
        with self._pending_lock:
            started = self._pending.pop(node, None)
        if started is not None:
            self.convergence_seconds.observe(time.monotonic() - started)

    # --- certificates ----------------------------------------------------------------------
    def watch_ca(self, ca: Any) -> None:
        """Export, read from ``ca`` at each scrape, the earliest ``not_after`` per (SPIFFE ID, node) of
        unexpired issued certificates and the expiry of each CA root (by role: current, next, previous)."""
        self.registry.register(_CertificateCollector(ca))


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class _CertificateCollector:
    def __init__(self, ca: Any):
        self._ca = ca

    def describe(self):
        return []  # collected lazily: the CA may not be readable when the collector is registered

    def collect(self):
        leaves = GaugeMetricFamily(
            "meshcore_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the newest certificate issued to an identity on a node (an expired one "
            "stays until it is renewed, while the CA keeps its record).",
            labels=["spiffe_id", "node"])
        lifetimes = GaugeMetricFamily(
            "meshcore_certificate_lifetime_seconds",
            "Lifetime (not-after minus not-before) of that certificate: expiry alerts relative to it.",
            labels=["spiffe_id", "node"])
        roots = GaugeMetricFamily(
            "meshcore_ca_root_expiry_timestamp_seconds", "Expiry (Unix time) of each CA root in the trust bundle.",
            labels=["role"])
        try:
            earliest: dict[tuple[str, str], tuple[float, float]] = {}
            recent = getattr(self._ca, "recent", None)
            for cert in (recent() if recent is not None else self._ca.issued()):
                key = (cert.spiffe_id, cert.node or "")
                ts = _timestamp(cert.not_after)
                if key not in earliest or ts < earliest[key][0]:
                    earliest[key] = (ts, ts - _timestamp(cert.not_before))
            for (spiffe_id, node), (ts, lifetime) in sorted(earliest.items()):
                leaves.add_metric([spiffe_id, node], ts)
                lifetimes.add_metric([spiffe_id, node], lifetime)
            for root in self._ca.state()["roots"]:
                roots.add_metric([root["role"]], _timestamp(root["not_after"]))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the CA could not be read
            log.warning("reading certificates for metrics failed", exc_info=True)
        yield leaves
        yield lifetimes
        yield roots
