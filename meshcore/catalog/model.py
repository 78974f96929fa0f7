"""The catalog as meshcore sees it: immutable, sorted, comparable.

Every catalog source (Consul, files) produces a :class:`Catalog`. Field names follow
Consul's service definitions where Consul has the concept.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from itertools import groupby

DEFAULT_DATACENTER = "dc1"

MESH_GATEWAY = "mesh-gateway"
# How a sidecar reaches an upstream's instances in another datacenter (Consul's ``MeshGateway.Mode``):
# "none" directly at their mesh addresses, "local" through its own datacenter's mesh gateway, "remote"
# straight to the mesh gateway of the instances' datacenter. "" = not set (the default, "none").
MESH_GATEWAY_MODES = ("", "none", "local", "remote")
# Where an upstream's mode was set: "upstream" (the upstream's own ``MeshGateway`` in its registration), "proxy"
# (the sidecar's ``Proxy.MeshGateway``, the default of its upstreams), "entries" (config entries:
# meshcore.consul_entries.gateway_modes) or "" (nowhere; a mode set without a scope counts as the upstream's own).
MESH_GATEWAY_SCOPES = ("", "proxy", "upstream", "entries")


@dataclass(frozen=True, order=True)
class Upstream:
    """An upstream a service declared (Consul: ``connect.sidecar_service.proxy.upstreams[]``)."""

    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    datacenter: str | None = None
    mesh_gateway: str = ""  # one of MESH_GATEWAY_MODES: how instances in other datacenters are reached
    mesh_gateway_scope: str = ""  # one of MESH_GATEWAY_SCOPES: which registration set mesh_gateway


@dataclass(frozen=True, order=True)
class Node:
    name: str
    address: str
    datacenter: str = DEFAULT_DATACENTER
    meta: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, order=True)
class ServiceInstance:
    """One registered instance of a service, together with its sidecar (mesh) registration.

    ``port`` is the application's own port; the app listens on ``local_service_address``.
    ``mesh_address``/``mesh_port`` are where the instance's Envoy accepts mTLS from the mesh
    (Consul: the ``<name>-sidecar-proxy`` service's address and port). ``kind`` is ``""``
    for an ordinary service, ``"ingress-gateway"`` or ``"mesh-gateway"`` for a gateway proxy, as in Consul.
    A mesh gateway's ``mesh_address``/``mesh_port`` are its LAN address (Consul's tagged ``lan``) and
    ``wan_address``/``wan_port`` the one other datacenters reach it at (tagged ``wan``; else the LAN one).
    """

    service: str
    id: str
    node: str
    port: int
    mesh_address: str
    mesh_port: int
    local_service_address: str = "127.0.0.1"
    address: str = ""
    kind: str = ""
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    healthy: bool = True
    upstreams: tuple[Upstream, ...] = ()
    datacenter: str = DEFAULT_DATACENTER
    wan_address: str = ""
    wan_port: int = 0
    # The SPIFFE trust domain of the instance's SVID when its datacenter has one of its own ("" = the reading
    # control plane's): set by the Consul source for a datacenter listed as ``<dc>@<trust domain>``.
    trust_domain: str = ""
    # How this sidecar reaches the other datacenters of a host that is none of its upstreams (a VirtualService
    # route's other host), as Consul's config entries decide it (meshcore.consul_entries.gateway_modes): sorted
    # ``(host, mode)`` pairs, ``("", mode)`` the default for every host not listed. Empty: no entry says anything
    # (the sidecar's own proxy-wide mode applies, see meshcore.xds.generate.mesh_gateway.host_mode).
    mesh_gateway_defaults: tuple[tuple[str, str], ...] = ()

    # Derived values, computed once per (immutable) instance: generation asks for them per endpoint.
    @cached_property
    def _meta(self) -> dict[str, str]:
        return dict(self.meta)

    @cached_property
    def _labels(self) -> dict[str, str]:
        labels = {f"tag:{t}": "true" for t in self.tags}
        labels.update(self._meta)
        labels["app"] = self.service
        return labels

    def with_upstreams(self, upstreams: tuple["Upstream", ...],
                       mesh_gateway_defaults: tuple[tuple[str, str], ...] | None = None) -> "ServiceInstance":
        """This instance with other upstreams (and gateway defaults): a copy of its fields and derived values (none
        of which reads them), several times cheaper than ``dataclasses.replace`` for a catalog-wide change."""
        out = object.__new__(ServiceInstance)
        out.__dict__.update(self.__dict__)
        object.__setattr__(out, "upstreams", tuple(upstreams))
        if mesh_gateway_defaults is not None:
            object.__setattr__(out, "mesh_gateway_defaults", tuple(mesh_gateway_defaults))
        return out

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self._meta)  # a copy: callers may change it

    @property
    def labels(self) -> dict[str, str]:
        """Workload labels: ``app`` is the service name, every meta key is a label, tags are ``tag:<t>=true``."""
        return dict(self._labels)

    @cached_property
    def service_account(self) -> str:
        return self._meta.get("service-account") or self.service

    @cached_property
    def namespace(self) -> str:
        return self._meta.get("namespace") or "default"

    @cached_property
    def protocol(self) -> str:
        return (self._meta.get("protocol") or "http").lower()


@dataclass(frozen=True)
class Catalog:
    """A consistent view of nodes and service instances. Always built via :meth:`of`, so sorted."""

    nodes: tuple[Node, ...] = ()
    instances: tuple[ServiceInstance, ...] = ()

    @classmethod
    def of(cls, nodes, instances) -> "Catalog":
        return cls(nodes=tuple(sorted(nodes)), instances=tuple(sorted(instances)))

    def node(self, name: str) -> Node | None:
        return self._nodes_by_name.get(name)

    # Indexes, built once per (immutable) catalog: every proxy's build looks things up here.
    @cached_property
    def _nodes_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def _by_node(self) -> dict[str, tuple[ServiceInstance, ...]]:
        return _group(self.instances, lambda i: i.node)

    def _node_index_from(self, old: "Catalog", services: frozenset[str]) -> dict[str, tuple[ServiceInstance, ...]]:
        """This catalog's by-node index from ``old``'s, when only ``services`` changed."""
        by_node = dict(old._by_node)
        touched: dict[str, list[tuple[ServiceInstance, ...]]] = {}
        for s in services:
            for inst in old._by_service.get(s, ()):
                touched.setdefault(inst.node, [])
            for inst in self._by_service.get(s, ()):
                touched.setdefault(inst.node, [])
        for node in touched:
            kept = tuple(i for i in old._by_node.get(node, ()) if i.service not in services)
            added = tuple(i for s in services for i in self._by_service.get(s, ()) if i.node == node)
            merged = _merge_sorted(kept, added)
            if merged:
                by_node[node] = merged
            else:
                by_node.pop(node, None)
        return by_node

    @cached_property
    def _by_service(self) -> dict[str, tuple[ServiceInstance, ...]]:
        # Instances are sorted by service first: each service is one run of the tuple.
        return {s: tuple(run) for s, run in groupby(self.instances, key=lambda i: i.service)}

    def _instances_of_service(self, service: str) -> tuple[ServiceInstance, ...]:
        """``service``'s run of the sorted instances, found by bisection (no index needed)."""
        lo = bisect_left(self.instances, service, key=lambda i: i.service)
        hi = bisect_right(self.instances, service, lo=lo, key=lambda i: i.service)
        return self.instances[lo:hi]

    def on_node(self, node: str) -> tuple[ServiceInstance, ...]:
        return self._by_node.get(node, ())

    def healthy(self, service: str) -> tuple[ServiceInstance, ...]:
        return tuple(i for i in self.instances_of(service) if i.healthy)

    def instances_of(self, service: str) -> tuple[ServiceInstance, ...]:
        return self._by_service.get(service, ())

    def service_names(self) -> tuple[str, ...]:
        return self._service_names

    def services_of_kind(self, kind: str) -> tuple[str, ...]:
        """The services with an instance of ``kind`` (``mesh-gateway``, ...: Consul's ``ServiceKind``), sorted.
        Consul identifies a gateway by its kind, whatever its name."""
        return self._kinds.get(kind, ())

    @cached_property
    def _kinds(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for service, insts in self._by_service.items():
            for kind in sorted({i.kind for i in insts if i.kind}):
                found.setdefault(kind, []).append(service)
        return {k: tuple(sorted(v)) for k, v in found.items()}

    # Summaries of one service's instances that generation reads on the caller's side. Each is its own
    # dependency (meshcore.controlplane._deps): an instance added or removed with the same protocol and
    # identity changes only the service's endpoints, not what its callers' listeners and clusters read.
    def protocols_of(self, service: str) -> frozenset[str]:
        """The protocols ``service``'s instances declare (meta ``protocol``, default ``http``)."""
        found = self._protocols.get(service)
        if found is None:
            found = self._protocols[service] = frozenset(i.protocol for i in self.instances_of(service))
        return found

    def identities_of(self, service: str) -> tuple[tuple[str, str], ...]:
        """The ``(namespace, service account)`` pairs of ``service``'s instances, sorted: what their
        SPIFFE IDs are made of."""
        found = self._identities.get(service)
        if found is None:
            found = self._identities[service] = tuple(sorted({(i.namespace, i.service_account)
                                                              for i in self.instances_of(service)}))
        return found

    @cached_property
    def _protocols(self) -> dict[str, frozenset[str]]:
        return {}  # filled on demand (a benign race: two threads compute the same value)

    @cached_property
    def _identities(self) -> dict[str, tuple[tuple[str, str], ...]]:
        return {}

    @cached_property
    def _service_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_service))

    # --- per-service and per-node content hashes, and what changed since another catalog ---------
    @cached_property
    def service_hashes(self) -> dict[str, str]:
        """``service -> content hash of its instances`` (equal content, equal hash, in any catalog)."""
        return {s: _digest(insts) for s, insts in self._by_service.items()}

    @cached_property
    def node_hashes(self) -> dict[str, str]:
        """``node name -> content hash of the node`` (address, datacenter, meta)."""
        return {n.name: _digest(n) for n in self.nodes}

    def changes_since(self, old: "Catalog | None", hint: frozenset[str] | None = None) -> "CatalogChange":
        """What differs from ``old``: the services whose instances changed and the nodes that changed.

        ``hint`` (a source's :attr:`CatalogUpdate.changed_services`) narrows the comparison to those
        services: the source promises every other service's instances are equal to ``old``'s. Without
        it, each service's instance tuple is compared (tuple equality, identity first, no hashing).
        Either way this catalog's :attr:`service_hashes` are seeded from ``old``'s for the unchanged
        services, so a change costs hashing only what changed.
        """
        if old is None:
            return CatalogChange(services=frozenset(self._by_service), nodes=frozenset(self._nodes_by_name),
                                 names_changed=True)
        old_s = old._by_service
        if hint is None:
            new_s = self._by_service
            services = frozenset(s for s in new_s.keys() | old_s.keys() if new_s.get(s) != old_s.get(s))
        else:
            # Trust the hint: derive this catalog's indexes from old's, touching only the hinted services.
            hinted = {s: self._instances_of_service(s) for s in hint}
            services = frozenset(s for s, insts in hinted.items() if insts != old_s.get(s, ()))
            if "_by_service" not in self.__dict__:
                by_service = {s: v for s, v in old_s.items() if s not in services}
                by_service.update((s, hinted[s]) for s in services if hinted[s])
                self.__dict__["_by_service"] = by_service
                self.__dict__["_by_node"] = self._node_index_from(old, services)
            new_s = self._by_service
        new_n, old_n = self._nodes_by_name, old._nodes_by_name
        if self.nodes == old.nodes:
            nodes: frozenset[str] = frozenset()
        else:
            nodes = frozenset(n for n in new_n.keys() | old_n.keys() if new_n.get(n) != old_n.get(n))
        if "service_hashes" in old.__dict__ and "service_hashes" not in self.__dict__:
            hashes = {s: h for s, h in old.service_hashes.items() if s in new_s and s not in services}
            hashes.update((s, _digest(new_s[s])) for s in services if s in new_s)
            self.__dict__["service_hashes"] = hashes
        if "node_hashes" in old.__dict__ and "node_hashes" not in self.__dict__:
            node_hashes = {n: h for n, h in old.node_hashes.items() if n in new_n and n not in nodes}
            node_hashes.update((n, _digest(new_n[n])) for n in nodes if n in new_n)
            self.__dict__["node_hashes"] = node_hashes
        names_changed = bool(services) and new_s.keys() != old_s.keys()
        return CatalogChange(services=services, nodes=nodes, names_changed=names_changed)


@dataclass(frozen=True)
class CatalogChange:
    """The difference between two catalogs (see :meth:`Catalog.changes_since`)."""

    services: frozenset[str] = frozenset()  # services whose instances differ (added, removed or changed)
    nodes: frozenset[str] = frozenset()  # nodes added, removed or changed
    names_changed: bool = False  # the set of service names differs

    def __bool__(self) -> bool:
        return bool(self.services or self.nodes)


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _merge_sorted(*runs: tuple[ServiceInstance, ...]) -> tuple[ServiceInstance, ...]:
    return tuple(sorted(i for run in runs for i in run))


def _group(instances, key) -> dict:
    groups: dict = {}
    for inst in instances:
        groups.setdefault(key(inst), []).append(inst)
    return {k: tuple(v) for k, v in groups.items()}


@dataclass(frozen=True)
class CatalogUpdate:
    """What a source returns from one (possibly blocking) poll.

    ``changed_services`` is an optional hint: the services whose instances may differ from the
    catalog of the source's previous update (a superset is fine; ``None`` = unknown, the engine
    compares every service). See :class:`meshcore.catalog.source.CatalogSource`.
    """

    catalog: Catalog
    index: int
    extra: dict = field(default_factory=dict, compare=False)
    changed_services: frozenset[str] | None = field(default=None, compare=False)
