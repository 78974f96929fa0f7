"""MeshSnapshot: one immutable, content-hashed picture of the whole mesh.

Built (purely) from the catalog, the mesh resources and the trust settings. Two snapshots with
the same content have the same ``hash``; the control plane pushes nothing when the hash has not
changed. The hash is composed from per-service, per-node and per-resource content hashes, so
:meth:`MeshSnapshot.update` makes the next snapshot from the previous one by hashing only what
changed (sharing every unchanged resource and hash), and says what changed
(:class:`SnapshotChange`): :meth:`MeshSnapshot.build` and ``update`` give equal snapshots with
equal hashes for equal content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Iterable, Mapping

from .catalog.model import Catalog, CatalogChange, ServiceInstance
from .naming import DEFAULT_TRUST_DOMAIN, workload_spiffe_id
from .resources.model import Resource, ResourceKey

if TYPE_CHECKING:
    from .policies.request_authentication.trust import JwksSettings


@dataclass(frozen=True)
class TelemetrySettings:
    """Mesh-wide telemetry the control plane puts into every proxy's configuration."""

    tracing_otlp: str = ""  # host:port of an OTLP/gRPC collector; "" = tracing off
    tracing_sampling: float = 1.0  # percent of requests sampled (0..100)
    access_log: str = ""  # "" = off, "stdout" (the agent's journal) or an absolute file path on the VM
    access_log_format: str = "json"  # "json" or "text"
    access_log_sampling: float = 100.0  # percent of requests logged (0..100); errors are always logged


@dataclass(frozen=True)
class MeshSettings:
    """Control-plane settings that shape the generated config (not resources, not catalog).

    ``federated_bundles`` are other trust domains' roots as ``(trust_domain, PEM bundle)`` pairs,
    sorted by trust domain; peers of those domains verify against their own domain's roots only.
    """

    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    federated_bundles: tuple[tuple[str, str], ...] = ()
    # Inbound HTTP before authorization (meshcore.xds.generate.listeners, docs/security.md): Istio's MeshConfig
    # pathNormalization (NONE | BASE | MERGE_SLASHES | DECODE_AND_MERGE_SLASHES), and whether paths may carry
    # parameters (';', %3B; else 400).
    path_normalization: str = "MERGE_SLASHES"
    allow_path_parameters: bool = False
    # External authorizers of CUSTOM AuthorizationPolicies (meshcore.authz.providers: MeshConfig extensionProviders).
    ext_authz_providers: tuple = ()
    # JWKS trust and what OIDC discovery found (None: the defaults).
    jwks: "JwksSettings | None" = None
    # X-Forwarded-For hops an ingress gateway trusts (Istio's gatewayTopology.numTrustedProxies; remoteIpBlocks).
    gateway_trusted_proxies: int = 0


ResourceChange = tuple["Resource | None", "Resource | None"]  # (old, new); None = absent on that side


@dataclass(frozen=True)
class SnapshotChange:
    """What differs between two snapshots (see :meth:`MeshSnapshot.update`); ``full`` = everything."""

    catalog: CatalogChange = field(default_factory=CatalogChange)
    resources: tuple[ResourceChange, ...] = ()  # every added, changed or deleted resource
    settings: bool = False
    trust_domain: bool = False
    full: bool = False

    def __bool__(self) -> bool:
        return self.full or bool(self.catalog) or bool(self.resources) or self.settings or self.trust_domain


def _resource_order(r: Resource) -> tuple[str, str, str]:
    return (r.kind, r.namespace, r.name)


def _resource_hash(r: Resource) -> str:
    return hashlib.sha256(r.canonical_json().encode()).hexdigest()[:16]


_SUM_BITS = 128
_SUM_MOD = 1 << _SUM_BITS


def _item(part: str, name: str, value: str) -> int:
    """One service's, node's or resource's content hash as a number (what :func:`_content_sum` adds up)."""
    return int.from_bytes(hashlib.sha256(f"{part}\0{name}\0{value}".encode()).digest()[:_SUM_BITS // 8], "big")


def _content_sum(catalog: Catalog, resource_hashes: Mapping[ResourceKey, str]) -> int:
    """The sum (mod 2**128) of every service's, node's and resource's :func:`_item`: independent of order, so
    :meth:`MeshSnapshot.update` adjusts it by what changed instead of hashing the whole mesh again."""
    total = sum(_item("service", name, h) for name, h in catalog.service_hashes.items())
    total += sum(_item("node", name, h) for name, h in catalog.node_hashes.items())
    total += sum(_item("resource", str(key), h) for key, h in resource_hashes.items())
    return total % _SUM_MOD


def _compose_hash(trust_domain: str, settings: MeshSettings, content_sum: int) -> str:
    digest = hashlib.sha256()
    digest.update(trust_domain.encode())
    digest.update(b"\0settings\0")
    digest.update(repr(settings).encode())
    digest.update(b"\0content\0")
    digest.update(content_sum.to_bytes(_SUM_BITS // 8, "big"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class MeshSnapshot:
    catalog: Catalog
    resources: tuple[Resource, ...] = ()
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    settings: MeshSettings = field(default_factory=MeshSettings)
    hash: str = field(default="", compare=False)
    resource_hashes: Mapping[ResourceKey, str] = field(default_factory=dict, compare=False, repr=False)
    content_sum: int = field(default=0, compare=False, repr=False)  # see _content_sum

    @classmethod
    def build(cls, catalog: Catalog, resources: Iterable[Resource] = (), trust_domain: str = DEFAULT_TRUST_DOMAIN,
              settings: MeshSettings | None = None) -> "MeshSnapshot":
        """A snapshot from scratch: every service, node and resource hashed."""
        settings = settings or MeshSettings()
        ordered = tuple(sorted(resources, key=_resource_order))
        hashes = {r.key: _resource_hash(r) for r in ordered}
        total = _content_sum(catalog, hashes)
        return cls(catalog=catalog, resources=ordered, trust_domain=trust_domain, settings=settings,
                   hash=_compose_hash(trust_domain, settings, total), resource_hashes=hashes, content_sum=total)

    def update(self, catalog: Catalog | None = None, resources: Iterable[Resource] | None = None,
               settings: MeshSettings | None = None, trust_domain: str | None = None, *,
               changed_services: frozenset[str] | None = None) -> tuple["MeshSnapshot", SnapshotChange]:
        """The next snapshot, made from this one for what changed, and what changed.

        ``None`` arguments keep this snapshot's part. ``changed_services`` is the catalog source's
        hint (:attr:`meshcore.catalog.model.CatalogUpdate.changed_services`). Unchanged resources
        are shared with this snapshot (the same objects), and only changed services, nodes and
        resources are hashed; the result equals ``MeshSnapshot.build`` of the same inputs.
        """
        new_catalog = self.catalog if catalog is None else catalog
        new_settings = self.settings if settings is None else settings
        new_td = self.trust_domain if trust_domain is None else trust_domain
        cat_change = CatalogChange() if new_catalog is self.catalog else \
            new_catalog.changes_since(self.catalog, changed_services)
        res_changes: list[ResourceChange] = []
        ordered, hashes = self.resources, self.resource_hashes
        if resources is not None:
            old_by_key = self._by_key
            new_by_key: dict[ResourceKey, Resource] = {}
            hashes = {}
            for r in resources:
                new_by_key[r.key] = r
            for key, r in new_by_key.items():
                old = old_by_key.get(key)
                if old is not None and (old is r or old == r):
                    hashes[key] = self.resource_hashes[key]
                    new_by_key[key] = old  # share the unchanged object
                else:
                    hashes[key] = _resource_hash(r)
                    res_changes.append((old, r))
            res_changes.extend((old, None) for key, old in old_by_key.items() if key not in new_by_key)
            if res_changes:
                ordered = tuple(sorted(new_by_key.values(), key=_resource_order))
            else:
                hashes = self.resource_hashes
        change = SnapshotChange(catalog=cat_change, resources=tuple(res_changes),
                                settings=new_settings != self.settings, trust_domain=new_td != self.trust_domain)
        if not change:
            if new_catalog is self.catalog:
                return self, change
            # Equal content in a new catalog object: keep serving the new object (its indexes are fresh).
            return MeshSnapshot(catalog=new_catalog, resources=ordered, trust_domain=new_td, settings=new_settings,
                                hash=self.hash, resource_hashes=hashes, content_sum=self.content_sum), change
        total = self.content_sum  # adjusted by what changed: the rest of the mesh is not hashed again
        old_cat = self.catalog
        for part, names, before, after in (
                ("service", cat_change.services, old_cat.service_hashes, new_catalog.service_hashes),
                ("node", cat_change.nodes, old_cat.node_hashes, new_catalog.node_hashes)):
            for name in names:
                if name in before:
                    total -= _item(part, name, before[name])
                if name in after:
                    total += _item(part, name, after[name])
        for old, new in res_changes:
            if old is not None:
                total -= _item("resource", str(old.key), self.resource_hashes[old.key])
            if new is not None:
                total += _item("resource", str(new.key), hashes[new.key])
        total %= _SUM_MOD
        snap = MeshSnapshot(catalog=new_catalog, resources=ordered, trust_domain=new_td, settings=new_settings,
                            hash=_compose_hash(new_td, new_settings, total), resource_hashes=hashes, content_sum=total)
        return snap, change

    @cached_property
    def _by_key(self) -> dict[ResourceKey, Resource]:
        return {r.key: r for r in self.resources}

    @cached_property
    def _by_kind(self) -> dict[str, tuple[Resource, ...]]:
        groups: dict[str, list[Resource]] = {}
        for r in self.resources:
            groups.setdefault(r.kind, []).append(r)
        return {k: tuple(v) for k, v in groups.items()}

    def spiffe_id(self, instance: ServiceInstance) -> str:
        # an instance of a datacenter with a trust domain of its own (docs/multi-dc.md) has its SVID in that one
        return workload_spiffe_id(instance.trust_domain or self.trust_domain, instance.namespace,
                                  instance.service_account)

    def resources_of(self, kind: str) -> tuple[Resource, ...]:
        return self._by_kind.get(kind, ())


@dataclass(frozen=True)
class ProxyInfo:
    """What the control plane knows of one connected Envoy (from its xDS node metadata)."""

    node: str
    secrets_dir: str
    admin: str = ""
    metrics: str = ""  # host:port of the VM agent's merged Prometheus endpoint ("" = not advertised)
    system_ca_bundle: str | None = None  # the CA bundle the agent found on the VM ("": none; None: not reported)
