"""Sidecar: the egress listeners of each proxy whose services a Sidecar selects, and their inbound ports.

Scoping (a proxy gets only the upstreams its Sidecar lists) happens in generation itself
(:mod:`meshcore.xds.generate.sidecar_scope`, the hook in ``outbound_bindings``), so nothing out of scope is built
and no plugin sees it. This plugin adds what a Sidecar declares on top: its ``egress[].port`` listeners
(:mod:`.egress`), each with the outbound traffic policy of its Sidecar (its own ``outboundTrafficPolicy.mode``, else
the mesh-wide Sidecar's, else ALLOW_ANY). Two Sidecars of one proxy's services declaring the same address and port
differently, an egress listener on an upstream's local address, or an ``ingress[]`` entry that does not fit the
instances it selects (:mod:`.ingress`), refuse this proxy's config
(:class:`~meshcore.errors.SnapshotInvalid`): the proxy keeps its last good config.
"""

from __future__ import annotations

from ...errors import MissingSubset, RouteProblem, SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet
from ...xds.generate import vocab as c
from ...xds.generate.sidecar_scope import outbound_mode, sidecar_for
from ...xds.generate.vocab import LISTENER, ROUTE
from ..service_entry.clusters import host_index
from .egress import EgressBuilder, EgressProblem
from .inbound_pool import apply_inbound_pools
from .ingress import apply_ingress
from .schema import KIND_NAME
from .spec import spec_of

KIND = KIND_NAME


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    sidecars = snapshot.resources_of(KIND)
    if not sidecars:
        return
    apply_inbound_pools(snapshot, proxy, resources, sidecars)
    problems: list[str] = apply_ingress(snapshot, proxy, resources, sidecars)  # ingress[] (.ingress)
    declared: dict[tuple[str, int], tuple] = {}
    for inst in c.sidecar_instances(snapshot, proxy):
        sidecar = sidecar_for(sidecars, inst)
        if sidecar is None:
            continue
        for listener in spec_of(sidecar).listeners:
            assert listener.port is not None
            key = (listener.bind, listener.port.number)
            other = declared.get(key)
            if other is not None and other[0].key != sidecar.key:
                problems.append(f"Sidecars {other[0].namespace}/{other[0].name} and {sidecar.namespace}/{sidecar.name} "
                                f"both declare an egress listener on {key[0]}:{key[1]} for this proxy")
                continue
            declared.setdefault(key, (sidecar, listener, inst))
    if not declared and not problems:
        return
    upstream_binds = {(up.local_bind_address, up.local_bind_port): up.destination_name
                      for _src, up in c.outbound_bindings(snapshot, proxy)}
    builder = EgressBuilder(snapshot, resources, ClusterSet(snapshot, proxy, resources), host_index(snapshot))
    for key, (sidecar, listener, inst) in sorted(declared.items()):
        where = f"Sidecar {sidecar.namespace}/{sidecar.name} egress listener {key[0]}:{key[1]}"
        if key in upstream_binds:
            problems.append(f"{where}: the upstream {upstream_binds[key]!r} already binds that address")
            continue
        mode = outbound_mode(sidecars, sidecar)
        try:
            assert listener.port is not None
            if listener.port.family == "http":
                draft, route = builder.http(inst, sidecar, listener, mode)
                resources[ROUTE].append(route)
            else:
                draft = builder.tls(inst, sidecar, listener, mode)
        except (EgressProblem, MissingSubset, RouteProblem) as exc:
            problems.append(f"{where}: {exc}")
            continue
        resources[LISTENER].append(draft)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)
    resources[LISTENER].sort(key=lambda draft: draft.name)
    resources[ROUTE].sort(key=lambda r: r.name)


__all__ = ["apply"]
