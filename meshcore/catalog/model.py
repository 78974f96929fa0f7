"""The catalog as meshcore sees it: immutable, sorted, comparable.

Every catalog source (Consul, files) produces a :class:`Catalog`. Field names follow
Consul's service definitions where Consul has the concept.
"""

from __future__ import annotations

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
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    # Indexes, built once per (immutable) catalog: every proxy's build looks things up here.
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
        return tuple(sorted(self._by_service))


def _group(instances, key) -> dict:
    groups: dict = {}
    for inst in instances:
        groups.setdefault(key(inst), []).append(inst)
    return {k: tuple(v) for k, v in groups.items()}


@dataclass(frozen=True)
class CatalogUpdate:
    """What a source returns from one (possibly blocking) poll."""

    catalog: Catalog
    index: int
    extra: dict = field(default_factory=dict, compare=False)
