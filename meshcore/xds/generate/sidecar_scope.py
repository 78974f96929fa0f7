"""Sidecar scoping (pure): which declared upstreams a proxy gets, by the Sidecar of each local service.

A Sidecar (:mod:`meshcore.policies.sidecar`) lists, in ``egress[].hosts``, the hosts its workloads may reach, as
Istio writes them: ``<namespace>/<host>`` where the namespace is ``*`` (any), ``.`` (the Sidecar's own), ``~``
(none) or a name, and the host ``*``, ``*.<suffix>`` or one name (a Consul service, or a ServiceEntry host). An
upstream outside its service's Sidecar is left out of the proxy entirely: no listener, route, cluster or
endpoints, so the proxy neither receives nor depends on it. :func:`scope_bindings` is the hook
:func:`meshcore.xds.generate.vocab.outbound_bindings` calls: every generator and plugin sees the same scoped set,
through the same snapshot reads (``resources_of("Sidecar")``, the upstream's catalog instances), which the
engine's dependency index already records.

Which Sidecar applies to a workload, as in Istio: the one in its namespace whose ``workloadSelector`` selects it,
else its namespace's Sidecar without a selector, else the mesh's (root namespace, no selector), else none (every
declared upstream). This module reads the validated specs (plain data): generation imports no policy package.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ...catalog.model import ServiceInstance, Upstream
from ...naming import DEFAULT_NAMESPACE
from ...resources.kinds._fields import ROOT_NAMESPACE
from ...resources.model import Resource
from ...snapshot import MeshSnapshot

SIDECAR = "Sidecar"
SERVICE_ENTRY = "ServiceEntry"
ALLOW_ANY, REGISTRY_ONLY = "ALLOW_ANY", "REGISTRY_ONLY"


def _selector(r: Resource) -> dict[str, str]:
    return dict(((r.spec or {}).get("workloadSelector") or {}).get("labels") or {})


class _Index:
    """The Sidecars of one snapshot arranged for lookups: by namespace, those with a selector (in name order) and
    the first without; and every egress pattern of each."""

    def __init__(self, sidecars: Iterable[Resource]):
        # (namespace, one label of the selector) -> (position in name order, selector, Sidecar): a workload is
        # matched against the Sidecars sharing one of its labels only, not against every Sidecar of its namespace.
        self.selected: dict[tuple[str, str, str], list[tuple[int, tuple[tuple[str, str], ...], Resource]]] = {}
        self.default: dict[str, Resource] = {}
        self.patterns: dict[tuple[str, str], tuple[str, ...]] = {}
        for pos, r in enumerate(sorted(sidecars, key=lambda r: (r.namespace, r.name))):
            sel = tuple(sorted(_selector(r).items()))
            if sel:
                self.selected.setdefault((r.namespace, *sel[0]), []).append((pos, sel, r))
            else:
                self.default.setdefault(r.namespace, r)
            self.patterns[(r.namespace, r.name)] = egress_hosts(r)

    def select(self, namespace: str, labels: Mapping[str, str]) -> Resource | None:
        """The first Sidecar (by name) of ``namespace`` whose selector ``labels`` satisfy."""
        best: tuple[int, Resource] | None = None
        for key, value in labels.items():
            for pos, sel, r in self.selected.get((namespace, key, value), ()):
                if (best is None or pos < best[0]) and all(labels.get(k) == v for k, v in sel):
                    best = (pos, r)
        return best[1] if best is not None else None


_MEMO: dict[int, tuple[tuple, Any]] = {}
"""Indexes of recent snapshots' resource tuples, by identity (a snapshot hands out one tuple per kind): a pure
function of immutable input, computed once per snapshot rather than once per binding."""


def _memo(items: tuple, build: Any) -> Any:
    hit = _MEMO.get(id(items))
    if hit is not None and hit[0] is items:
        return hit[1]
    value = build(items)
    if len(_MEMO) >= 8:
        _MEMO.clear()
    _MEMO[id(items)] = (items, value)
    return value


def sidecar_for(sidecars: Iterable[Resource], instance: ServiceInstance) -> Resource | None:
    """The Sidecar that applies to ``instance`` (the precedence of the module docstring)."""
    index: _Index = _memo(sidecars, _Index) if isinstance(sidecars, tuple) else _Index(sidecars)
    return (index.select(instance.namespace, instance.labels) or index.default.get(instance.namespace)
            or index.default.get(ROOT_NAMESPACE))


def mesh_default(sidecars: Iterable[Resource]) -> Resource | None:
    """The mesh-wide Sidecar: in the root namespace, without a selector."""
    return next((r for r in sorted(sidecars, key=lambda r: r.name)
                 if r.namespace == ROOT_NAMESPACE and not _selector(r)), None)


def outbound_mode(sidecars: Iterable[Resource], sidecar: Resource | None) -> str:
    """``outboundTrafficPolicy.mode`` for a workload of ``sidecar``: its own, else the mesh default's, else
    ALLOW_ANY (Istio's default)."""
    sidecars = tuple(sidecars)
    for r in (sidecar, mesh_default(sidecars)):
        mode = ((r.spec or {}).get("outboundTrafficPolicy") or {}).get("mode") if r is not None else None
        if mode:
            return str(mode)
    return ALLOW_ANY


def egress_hosts(sidecar: Resource) -> tuple[str, ...]:
    """Every ``egress[].hosts`` pattern of ``sidecar`` (the union of its listeners')."""
    out: list[str] = []
    for listener in (sidecar.spec or {}).get("egress") or ():
        out.extend(listener.get("hosts") or ())
    return tuple(out)


def host_matches(pattern: str, sidecar_namespace: str, host: str, host_namespace: str) -> bool:
    """Whether Istio's ``<namespace>/<host>`` ``pattern`` of a Sidecar in ``sidecar_namespace`` covers ``host``."""
    namespace, _, name = pattern.partition("/")
    if namespace == "~" or (namespace not in ("*", ".") and namespace != host_namespace):
        return False
    if namespace == "." and host_namespace != sidecar_namespace:
        return False
    if name == "*":
        return True
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


def _entry_namespaces(entries: tuple[Resource, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in sorted(entries, key=lambda r: (r.namespace, r.name)):
        for host in (r.spec or {}).get("hosts") or ():
            out.setdefault(host, r.namespace)
    return out


def host_namespace(snapshot: MeshSnapshot, host: str) -> str:
    """The namespace a host lives in: its ServiceEntry's, or its Consul instances' (``default`` without any)."""
    if "." in host:
        found = _memo(snapshot.resources_of(SERVICE_ENTRY), _entry_namespaces).get(host)
        if found is not None:
            return str(found)
    instances = snapshot.catalog.instances_of(host)
    return instances[0].namespace if instances else DEFAULT_NAMESPACE


def allows(snapshot: MeshSnapshot, sidecar: Resource | None, host: str) -> bool:
    """Whether a workload with ``sidecar`` may reach ``host`` (always, without a Sidecar)."""
    if sidecar is None:
        return True
    sidecars = snapshot.resources_of(SIDECAR)
    index: _Index = _memo(sidecars, _Index)
    patterns = index.patterns.get((sidecar.namespace, sidecar.name)) or egress_hosts(sidecar)
    namespace = host_namespace(snapshot, host)
    return any(host_matches(p, sidecar.namespace, host, namespace) for p in patterns)


def scope_bindings(snapshot: MeshSnapshot, bindings: tuple[tuple[ServiceInstance, Upstream], ...]
                   ) -> tuple[tuple[ServiceInstance, Upstream], ...]:
    """``bindings`` without the upstreams their service's Sidecar leaves out (all of them without Sidecars)."""
    sidecars = snapshot.resources_of(SIDECAR)
    if not sidecars or not bindings:
        return bindings
    chosen: dict[str, Any] = {}
    kept = []
    for inst, up in bindings:
        if inst.id not in chosen:
            chosen[inst.id] = sidecar_for(sidecars, inst)
        if allows(snapshot, chosen[inst.id], up.destination_name):
            kept.append((inst, up))
    return tuple(kept)


__all__ = ["SIDECAR", "ALLOW_ANY", "REGISTRY_ONLY", "sidecar_for", "mesh_default", "outbound_mode", "egress_hosts",
           "host_matches", "host_namespace", "allows", "scope_bindings"]
