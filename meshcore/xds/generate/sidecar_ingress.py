"""Sidecar ``ingress[]`` as generation sees a local instance (pure): its inbound protocol.

A Sidecar's ``ingress[]`` entry describes the inbound port of the instances it selects whose service port or sidecar
port is its ``port.number`` (:func:`ingress_matches`). Its ``port.protocol`` is the instance's inbound protocol, as
the registration's ``protocol`` meta would be: :func:`declared_instances` (the hook in
:func:`meshcore.xds.generate.vocab.sidecar_instances`) hands every generator and plugin the instance with that meta,
so the inbound listener (HTTP connection manager or tcp_proxy), its route, the app cluster's HTTP/2 and the inbound
policies (RBAC, rate limits, JWT) all agree. Callers keep reading the catalog: their side follows the registration.
The rest of the entry (the app's address, bind, pool, TLS) is the Sidecar plugin's
(:mod:`meshcore.policies.sidecar.ingress`). Reads the validated specs (plain data): generation imports no policy
package.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...catalog.model import ServiceInstance
from ...resources.model import Resource
from ...snapshot import MeshSnapshot
from .sidecar_scope import SIDECAR, sidecar_for

META_PROTOCOL = {
    # Istio's port protocol -> the registration's ``protocol`` meta it stands for (the Sidecar schema's choices)
    "HTTP": "http", "HTTP2": "http2", "GRPC": "grpc", "GRPC-WEB": "http",
    # bytes the sidecar does not parse: forwarded by tcp_proxy (TLS, HTTPS: the app's own TLS passes through)
    "TCP": "tcp", "TLS": "tcp", "HTTPS": "tcp", "MONGO": "tcp", "MYSQL": "tcp", "REDIS": "tcp",
}


def ingress_matches(sidecar: Resource | None, instance: ServiceInstance) -> list[tuple[int, dict[str, Any]]]:
    """``(index, entry)`` of every ``ingress[]`` entry of ``sidecar`` whose port is ``instance``'s service port or
    sidecar port (one, unless the Sidecar names both)."""
    if sidecar is None:
        return []
    return [(i, e) for i, e in enumerate((sidecar.spec or {}).get("ingress") or ())
            if e["port"]["number"] in (instance.port, instance.mesh_port)]


_LAST: list[tuple[tuple[Resource, ...], bool]] = []
"""The last snapshot's Sidecars (by identity: a snapshot hands out one tuple per kind) and whether any has
``ingress[]``: asked on every ``sidecar_instances`` call, answered once per snapshot."""


def any_ingress(sidecars: tuple[Resource, ...]) -> bool:
    """Whether any of a snapshot's Sidecars has ``ingress[]`` (the fast path of every caller: most have none)."""
    if _LAST and _LAST[0][0] is sidecars:
        return _LAST[0][1]
    found = any((r.spec or {}).get("ingress") for r in sidecars)
    _LAST[:] = [(sidecars, found)]
    return found


def declared_instances(snapshot: MeshSnapshot,
                       instances: tuple[ServiceInstance, ...]) -> tuple[ServiceInstance, ...]:
    """``instances`` (a proxy's own) with the inbound protocol their Sidecar's ``ingress[]`` gives them."""
    if not instances:
        return instances
    sidecars = snapshot.resources_of(SIDECAR)
    if not sidecars or not any_ingress(sidecars):
        return instances
    out = []
    for inst in instances:
        matches = ingress_matches(sidecar_for(sidecars, inst), inst)
        protocol = META_PROTOCOL[matches[0][1]["port"]["protocol"]] if matches else inst.protocol
        if protocol != inst.protocol:
            meta = dict(inst.meta)
            meta["protocol"] = protocol
            inst = replace(inst, meta=tuple(sorted(meta.items())))
        out.append(inst)
    return tuple(out)


__all__ = ["META_PROTOCOL", "any_ingress", "declared_instances", "ingress_matches"]
