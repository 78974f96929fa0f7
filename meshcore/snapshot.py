"""MeshSnapshot: one immutable, content-hashed picture of the whole mesh.

Built (purely) from the catalog, the mesh resources and the trust settings every time any of
them changes. Two snapshots with the same content have the same ``hash``; the control plane
pushes nothing when the hash has not changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable

from .catalog.model import Catalog, ServiceInstance
from .naming import DEFAULT_TRUST_DOMAIN, workload_spiffe_id
from .resources.model import Resource


@dataclass(frozen=True)
class TelemetrySettings:
    """Mesh-wide telemetry the control plane puts into every proxy's configuration."""

    tracing_otlp: str = ""  # host:port of an OTLP/gRPC collector; "" = tracing off
    tracing_sampling: float = 1.0  # percent of requests sampled (0..100)
    access_log: str = ""  # "" = off, "stdout" (the agent's journal) or an absolute file path on the VM
    access_log_format: str = "json"  # "json" or "text"


@dataclass(frozen=True)
class MeshSettings:
    """Control-plane settings that shape the generated config (not resources, not catalog).

    ``federated_bundles`` are other trust domains' roots as ``(trust_domain, PEM bundle)`` pairs,
    sorted by trust domain; peers of those domains verify against their own domain's roots only.
    """

    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    federated_bundles: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MeshSnapshot:
    catalog: Catalog
    resources: tuple[Resource, ...] = ()
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    settings: MeshSettings = field(default_factory=MeshSettings)
    hash: str = field(default="", compare=False)

    @classmethod
    def build(cls, catalog: Catalog, resources: Iterable[Resource] = (), trust_domain: str = DEFAULT_TRUST_DOMAIN,
              settings: MeshSettings | None = None) -> "MeshSnapshot":
        settings = settings or MeshSettings()
        ordered = tuple(sorted(resources, key=lambda r: (r.kind, r.namespace, r.name)))
        digest = hashlib.sha256()
        digest.update(trust_domain.encode())
        digest.update(repr(settings).encode())
        digest.update(repr(catalog).encode())
        for r in ordered:
            digest.update(r.canonical_json().encode())
        return cls(catalog=catalog, resources=ordered, trust_domain=trust_domain, settings=settings,
                   hash=digest.hexdigest()[:16])

    def spiffe_id(self, instance: ServiceInstance) -> str:
        return workload_spiffe_id(self.trust_domain, instance.namespace, instance.service_account)

    def resources_of(self, kind: str) -> tuple[Resource, ...]:
        return tuple(r for r in self.resources if r.kind == kind)


@dataclass(frozen=True)
class ProxyInfo:
    """What the control plane knows of one connected Envoy (from its xDS node metadata)."""

    node: str
    secrets_dir: str
    admin: str = ""
    metrics: str = ""  # host:port of the VM agent's merged Prometheus endpoint ("" = not advertised)
