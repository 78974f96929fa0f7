"""The catalog as meshcore sees it: immutable, sorted, comparable.

Every catalog source (Consul, files) produces a :class:`Catalog`. Field names follow
Consul's service definitions where Consul has the concept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

DEFAULT_DATACENTER = "dc1"


@dataclass(frozen=True, order=True)
class Upstream:
    """An upstream a service declared (Consul: ``connect.sidecar_service.proxy.upstreams[]``)."""

    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    datacenter: str | None = None


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
    for an ordinary service or ``"ingress-gateway"`` for a gateway proxy, as in Consul.
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

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)

    @property
    def labels(self) -> dict[str, str]:
        """Workload labels: ``app`` is the service name, every meta key is a label, tags are ``tag:<t>=true``."""
        labels = {f"tag:{t}": "true" for t in self.tags}
        labels.update(self.meta_dict)
        labels["app"] = self.service
        return labels

    @property
    def service_account(self) -> str:
        return self.meta_dict.get("service-account") or self.service

    @property
    def namespace(self) -> str:
        return self.meta_dict.get("namespace") or "default"

    @property
    def protocol(self) -> str:
        return (self.meta_dict.get("protocol") or "http").lower()


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

    @cached_property
    def _by_service(self) -> dict[str, tuple[ServiceInstance, ...]]:
        return _group(self.instances, lambda i: i.service)

    def on_node(self, node: str) -> tuple[ServiceInstance, ...]:
        return self._by_node.get(node, ())

    def healthy(self, service: str) -> tuple[ServiceInstance, ...]:
        return tuple(i for i in self.instances_of(service) if i.healthy)

    def instances_of(self, service: str) -> tuple[ServiceInstance, ...]:
        return self._by_service.get(service, ())

    def service_names(self) -> tuple[str, ...]:
        return self._service_names

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
        new_s, old_s = self._by_service, old._by_service
        if hint is None:
            services = frozenset(s for s in new_s.keys() | old_s.keys() if new_s.get(s) != old_s.get(s))
        else:
            services = frozenset(s for s in hint if new_s.get(s) != old_s.get(s))
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
