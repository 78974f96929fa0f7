"""The dependency index: for every proxy, the parts of the snapshot its last build read.

A proxy is built against a :class:`RecordingSnapshot`, a read-recording view of the
:class:`~meshcore.snapshot.MeshSnapshot` that generation reads only through its accessors
(``catalog.on_node/instances_of/healthy/protocols_of/identities_of/node/service_names``, ``resources_of(kind)``,
``settings``, ``trust_domain``). What it read becomes the proxy's :class:`Deps`. A
:class:`~meshcore.snapshot.SnapshotChange` then reaches exactly the proxies whose deps it touches
(:func:`affected`); every rebuild records the reads again, so a dependency a change introduces
(a VirtualService that now routes to a new host) is known from that rebuild on.

Keys (tuples):

* ``("svc", s)`` - the instances of service ``s`` (``instances_of``; also read by ``healthy``);
* ``("healthy", s)`` - which instances of ``s`` are healthy (``healthy``). A change that only flips
  health flags of ``s`` touches this key alone: readers of ``instances_of`` (protocols, identities)
  are not rebuilt, only what read ``healthy`` (its endpoints);
* ``("protocols", s)``, ``("identities", s)`` - the protocols and the ``(namespace, service account)``
  pairs of ``s``'s instances (``protocols_of``, ``identities_of``): what a caller's listeners and
  clusters read of an upstream. An instance added or removed that leaves them unchanged touches
  neither, so it reaches the callers only through the host's shared ClusterLoadAssignment;
* ``("on_node", n)`` - which instances run on node ``n`` (``on_node``);
* ``("node", n)`` - node ``n`` itself (``node``: address, datacenter, meta);
* ``("kind_services", k)`` - which services have instances of kind ``k`` (``services_of_kind``: the mesh
  gateways); a service whose instances gain or lose that kind touches it;
* ``("service_names",)``, ``("instances",)``, ``("nodes",)`` - the whole name set / catalog;
* ``("kind", k)`` - the resources of kind ``k`` (``resources_of``); ``("resources",)`` - all;
* ``("settings",)``, ``("trust_domain",)``.

A resource change is refined by kind: :func:`services_touched_by` reads the raw spec and names
the services whose proxies it can affect (a DestinationRule its host, a VirtualService its hosts
and destinations, a selector policy the services it selects); a proxy that read the kind is
rebuilt only when it also touched (read, or runs) one of them. ``None`` (unknown kind, or a
mesh-wide policy) reaches every proxy that read the kind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

from ..catalog.model import Catalog, Node, ServiceInstance
from ..resources.kinds._fields import ROOT_NAMESPACE
from ..resources.model import Resource
from ..snapshot import MeshSnapshot, SnapshotChange

Key = tuple[str, ...]

ALL_INSTANCES: Key = ("instances",)
ALL_NODES: Key = ("nodes",)
ALL_RESOURCES: Key = ("resources",)
SERVICE_NAMES: Key = ("service_names",)
SETTINGS: Key = ("settings",)
TRUST_DOMAIN: Key = ("trust_domain",)


@dataclass(frozen=True)
class Deps:
    """What one proxy build read: ``keys`` (see the module docstring), ``services``, every service
    it looked up or found running on its node, and ``local``, those found on its node (for
    refining resource changes: selector policies shape only the selected workloads' own proxies)."""

    keys: frozenset[Key]
    services: frozenset[str]
    local: frozenset[str]


class _Recorder:
    def __init__(self) -> None:
        self.keys: set[Key] = set()
        self.services: set[str] = set()
        self.local: set[str] = set()

    def deps(self) -> Deps:
        return Deps(frozenset(self.keys), frozenset(self.services), frozenset(self.local))


class RecordingCatalog:
    """A :class:`Catalog` view that records every lookup (same answers, same objects)."""

    def __init__(self, catalog: Catalog, recorder: _Recorder):
        self._catalog = catalog
        self._rec = recorder

    def on_node(self, node: str) -> tuple[ServiceInstance, ...]:
        self._rec.keys.add(("on_node", node))
        found = self._catalog.on_node(node)
        self._rec.services.update(i.service for i in found)
        self._rec.local.update(i.service for i in found)
        return found

    def instances_of(self, service: str) -> tuple[ServiceInstance, ...]:
        self._rec.keys.add(("svc", service))
        self._rec.services.add(service)
        return self._catalog.instances_of(service)

    def protocols_of(self, service: str) -> frozenset[str]:
        self._rec.keys.add(("protocols", service))
        self._rec.services.add(service)
        return self._catalog.protocols_of(service)

    def identities_of(self, service: str) -> tuple[tuple[str, str], ...]:
        self._rec.keys.add(("identities", service))
        self._rec.services.add(service)
        return self._catalog.identities_of(service)

    def healthy(self, service: str) -> tuple[ServiceInstance, ...]:
        self._rec.keys.update((("svc", service), ("healthy", service)))
        self._rec.services.add(service)
        return self._catalog.healthy(service)

    def node(self, name: str) -> Node | None:
        self._rec.keys.add(("node", name))
        return self._catalog.node(name)

    def service_names(self) -> tuple[str, ...]:
        self._rec.keys.add(SERVICE_NAMES)
        return self._catalog.service_names()

    def services_of_kind(self, kind: str) -> tuple[str, ...]:
        self._rec.keys.add(("kind_services", kind))
        return self._catalog.services_of_kind(kind)

    @property
    def instances(self) -> tuple[ServiceInstance, ...]:
        self._rec.keys.add(ALL_INSTANCES)
        self._rec.services.update(self._catalog.service_names())
        self._rec.local.update(self._catalog.service_names())
        return self._catalog.instances

    @property
    def nodes(self) -> tuple[Node, ...]:
        self._rec.keys.add(ALL_NODES)
        return self._catalog.nodes

    def __getattr__(self, name: str) -> Any:  # anything else: depends on the whole catalog
        self._rec.keys.update((ALL_INSTANCES, ALL_NODES))
        self._rec.services.update(self._catalog.service_names())
        self._rec.local.update(self._catalog.service_names())
        return getattr(self._catalog, name)


class RecordingSnapshot:
    """A :class:`MeshSnapshot` view for one build; :meth:`deps` is what the build read."""

    def __init__(self, snapshot: MeshSnapshot):
        self._snap = snapshot
        self._rec = _Recorder()
        self.catalog = RecordingCatalog(snapshot.catalog, self._rec)
        self.hash = snapshot.hash

    def deps(self) -> Deps:
        return self._rec.deps()

    @property
    def trust_domain(self) -> str:
        self._rec.keys.add(TRUST_DOMAIN)
        return self._snap.trust_domain

    @property
    def settings(self):
        self._rec.keys.add(SETTINGS)
        return self._snap.settings

    @property
    def resources(self) -> tuple[Resource, ...]:
        self._rec.keys.add(ALL_RESOURCES)
        return self._snap.resources

    def resources_of(self, kind: str) -> tuple[Resource, ...]:
        self._rec.keys.add(("kind", kind))
        return self._snap.resources_of(kind)

    def spiffe_id(self, instance: ServiceInstance) -> str:
        self._rec.keys.add(TRUST_DOMAIN)
        return self._snap.spiffe_id(instance)

    def __getattr__(self, name: str) -> Any:  # an accessor this view does not know: depends on everything
        self._rec.keys.update((ALL_INSTANCES, ALL_NODES, ALL_RESOURCES, SETTINGS, TRUST_DOMAIN))
        self._rec.services.update(self._snap.catalog.service_names())
        self._rec.local.update(self._snap.catalog.service_names())
        return getattr(self._snap, name)


# --- which services a resource can affect --------------------------------------------------------

_SELECTOR_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication", "RateLimit"})


def _selected(resource: Resource, catalogs: Iterable[Catalog]) -> frozenset[str] | None:
    """Services with a workload a selector policy applies to (the scope rules of those kinds)."""
    spec = resource.spec or {}
    selector = dict((spec.get("selector") or {}).get("matchLabels") or {})
    if not selector and resource.namespace == ROOT_NAMESPACE:
        return None  # mesh-wide
    found: set[str] = set()
    for catalog in catalogs:
        for inst in catalog.instances:
            if inst.namespace != resource.namespace or inst.service in found:
                continue
            labels = inst.labels
            if all(labels.get(k) == v for k, v in selector.items()):
                found.add(inst.service)
    return frozenset(found)


def _hosts(values: Any) -> set[str]:
    return {v for v in values or () if isinstance(v, str)}


def _virtual_service_hosts(spec: dict) -> set[str]:
    hosts = _hosts(spec.get("hosts"))
    for proto in ("http", "tcp", "tls"):
        for rule in spec.get(proto) or ():
            if not isinstance(rule, dict):
                continue
            for d in (list(rule.get("route") or ()) + list(rule.get("mirrors") or ())
                      + ([{"destination": rule["mirror"]}] if rule.get("mirror") else [])):
                dest = (d or {}).get("destination") or {}
                if isinstance(dest.get("host"), str):
                    hosts.add(dest["host"])
    return hosts


def local_only(kind: str) -> bool:
    """Whether resources of ``kind`` shape only the proxies running the services they touch
    (inbound policies), not those of their clients."""
    return kind in _SELECTOR_KINDS


def services_touched_by(resource: Resource, catalogs: Iterable[Catalog]) -> frozenset[str] | None:
    """The services whose proxies ``resource`` can affect, or None (any proxy that reads its kind)."""
    spec = resource.spec if isinstance(resource.spec, dict) else {}
    if resource.kind == "DestinationRule":
        host = spec.get("host")
        return frozenset({host}) if isinstance(host, str) else None
    if resource.kind == "VirtualService":  # without hosts: a delegate, reaching whoever its roots reach
        return frozenset(_virtual_service_hosts(spec)) if spec.get("hosts") else None
    if resource.kind in _SELECTOR_KINDS:
        return _selected(resource, catalogs)
    return None


# --- which proxies a change reaches --------------------------------------------------------------


@dataclass(frozen=True)
class ChangeKeys:
    """A :class:`SnapshotChange` as dependency keys, computed once per change for all proxies."""

    full: bool
    keys: frozenset[Key]
    resource_kinds: tuple[tuple[str, frozenset[str] | None], ...]  # (kind, services touched or None)

    def reaches(self, deps: Deps | None) -> bool:
        """Whether a proxy that read ``deps`` (None = never built) must be rebuilt."""
        if self.full or deps is None:
            return True
        if not self.keys.isdisjoint(deps.keys):
            return True
        for kind, services in self.resource_kinds:
            if ("kind", kind) in deps.keys or ALL_RESOURCES in deps.keys:
                if services is None or not services.isdisjoint(deps.local if local_only(kind) else deps.services):
                    return True
        return False


def _health_only(before: tuple[ServiceInstance, ...], after: tuple[ServiceInstance, ...]) -> bool:
    """Whether the two instance lists differ in health flags alone."""
    if len(before) != len(after):
        return False
    return all(a == b or replace(a, healthy=b.healthy) == b for a, b in zip(before, after))


def change_keys(change: SnapshotChange, old: MeshSnapshot | None, new: MeshSnapshot) -> ChangeKeys:
    if change.full or old is None:
        return ChangeKeys(full=True, keys=frozenset(), resource_kinds=())
    keys: set[Key] = set()
    cat = change.catalog
    hosts: set[str] = set()
    for s in cat.services:
        keys.add(("healthy", s))
        was, now = old.catalog.instances_of(s), new.catalog.instances_of(s)
        if not _health_only(was, now):
            keys.add(("svc", s))
            if old.catalog.protocols_of(s) != new.catalog.protocols_of(s):
                keys.add(("protocols", s))
            if old.catalog.identities_of(s) != new.catalog.identities_of(s):
                keys.add(("identities", s))
            keys.update(("kind_services", k) for k in {i.kind for i in was} ^ {i.kind for i in now} if k)
        for insts in (was, now):
            hosts.update(i.node for i in insts)
    keys.update(("on_node", n) for n in hosts if old.catalog.on_node(n) != new.catalog.on_node(n))
    if cat.services:
        keys.add(ALL_INSTANCES)
    if cat.names_changed:
        keys.add(SERVICE_NAMES)
    for n in cat.nodes:
        keys.add(("node", n))
    if cat.nodes:
        keys.add(ALL_NODES)
    if change.settings:
        keys.add(SETTINGS)
    if change.trust_domain:
        keys.add(TRUST_DOMAIN)
    catalogs = (old.catalog, new.catalog) if old.catalog is not new.catalog else (new.catalog,)
    merged: dict[str, set[str] | None] = {}
    for before, after in change.resources:
        for r in (before, after):
            if r is None:
                continue
            touched = services_touched_by(r, catalogs)
            if r.kind in merged and merged[r.kind] is None:
                continue
            if touched is None:
                merged[r.kind] = None
            else:
                current = merged.setdefault(r.kind, set())
                assert current is not None
                current.update(touched)
    kinds = tuple((k, None if v is None else frozenset(v)) for k, v in sorted(merged.items()))
    return ChangeKeys(full=False, keys=frozenset(keys), resource_kinds=kinds)


__all__ = ["Deps", "RecordingSnapshot", "RecordingCatalog", "ChangeKeys", "change_keys", "services_touched_by"]
