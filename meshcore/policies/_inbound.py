"""What the inbound policy plugins (AuthorizationPolicy, RateLimit) walk: each local workload's inbound
listener and the inbound route configuration its HTTP rules ride in."""

from __future__ import annotations

from typing import Iterator

from .. import naming
from ..snapshot import MeshSnapshot, ProxyInfo
from ..xds.generate import vocab as c
from ..xds.generate.vocab import LISTENER, ROUTE


def inbound_targets(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> Iterator[tuple]:
    """``(instance, listener draft, route or None)`` for every sidecar instance of ``proxy`` that has an inbound
    listener among the generated ``resources``."""

    listeners = {l.name: l for l in resources[LISTENER]}
    routes = {r.name: r for r in resources[ROUTE]}
    for inst in c.sidecar_instances(snapshot, proxy):
        listener = listeners.get(naming.inbound_listener(inst.id))
        if listener is not None:
            yield inst, listener, routes.get(naming.inbound_route(inst.id))
