"""The control plane's own Prometheus metrics (one registry per process, passed around)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import ProcessCollector, PlatformCollector


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
