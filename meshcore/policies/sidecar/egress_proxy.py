"""``Sidecar.outboundTrafficPolicy.egressProxy`` (Istio's): under ``ALLOW_ANY``, what a Sidecar's egress listeners
would pass through to an undeclared destination goes to the egress proxy instead (pure).

```yaml
outboundTrafficPolicy:
  mode: ALLOW_ANY
  egressProxy: {host: egress-gateway, subset: any, port: {number: 8443}}   # Istio's Destination
```

``port`` names the proxy's port; left out, a ServiceEntry host's first port of the listener's kind (HTTP for the
HTTP listener, TLS/TCP for the TLS one), a gateway's one Gateway server port.

* HTTP egress listener: a Host that no declared host's virtual host takes is routed to the egress proxy's cluster,
  the request as the app sent it (its Host kept), instead of Envoy's dynamic forward proxy;
* TLS egress listener: a server name no chain takes is forwarded (the app's own TLS, untouched) to the egress proxy,
  instead of the SNI dynamic forward proxy.

The egress proxy is a mesh destination: a gateway service (an egress gateway VM: its Gateway server on ``port``,
over the mesh's mTLS, the request's host as SNI, :mod:`meshcore.policies.gateway.egress`; it routes what it gets by
the VirtualServices bound to its Gateway, e.g. ``hosts: ["*"]`` to a corporate proxy), a Consul service, or a
ServiceEntry host (an HTTP proxy outside the mesh). Istio allows it with ``ALLOW_ANY`` only: under
``REGISTRY_ONLY`` an undeclared destination is refused, so there is nothing to send to a proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envoy.config.route.v3 import route_components_pb2 as rc

from ...catalog.model import ServiceInstance
from ...errors import EgressProblem
from ...resources.model import Resource
from ...xds.generate import vocab as c
from ...xds.generate.routes import DEFAULT_ROUTE_TIMEOUT_S
from ...xds.generate.sidecar_scope import allows
from ..gateway.egress import gateway_cluster, is_gateway_service
from ..virtual_service.ports import port_cluster
from ..virtual_service.spec import Destination

if TYPE_CHECKING:
    from .egress import EgressBuilder

def egress_proxy(sidecar: Resource) -> Destination | None:
    """The Sidecar's egress proxy, if it names one."""
    raw: Any = ((sidecar.spec or {}).get("outboundTrafficPolicy") or {}).get("egressProxy")
    if not raw:
        return None
    return Destination(raw["host"], raw.get("subset"), (raw.get("port") or {}).get("number"))


def proxy_cluster(builder: EgressBuilder, source: ServiceInstance, sidecar: Resource, dest: Destination,
                  family: str) -> str:
    """The cluster of the egress proxy on a listener of ``family`` (``http`` / ``tls``): a ServiceEntry host's port
    of that family (``port`` left out: its first)."""
    if dest.host in builder.entries:
        try:
            return builder.cluster_for(source, sidecar, dest.host, dest.subset, dest.port, family)
        except EgressProblem as exc:
            raise EgressProblem(f"outboundTrafficPolicy.egressProxy: {exc} (the {family.upper()} listener forwards "
                                f"there what it does not declare)") from exc
    if dest.port is not None:
        return port_cluster(builder.clusters, source, dest.host, dest.subset, dest.port)
    return builder.clusters.ensure(source, dest.host, dest.subset)


def to_gateway(builder: EgressBuilder, source: ServiceInstance, sidecar: Resource, dest: Destination) -> str | None:
    """A tls[] route's destination that is a gateway service in the Sidecar's scope: its cluster on the route's
    ``destination.port`` (Istio's HTTPS egress gateway task); None for any other destination."""
    if not is_gateway_service(builder.snapshot, dest.host) or not allows(builder.snapshot, sidecar, dest.host):
        return None
    return gateway_cluster(builder.clusters, source, dest.host, dest.subset, dest.port)


def http_fallback(builder: EgressBuilder, source: ServiceInstance, sidecar: Resource) -> rc.Route | None:
    """The HTTP egress listener's route for undeclared Hosts when the Sidecar has an egress proxy (else None)."""
    dest = egress_proxy(sidecar)
    if dest is None:
        return None
    return rc.Route(name="egress-proxy", match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(
        cluster=proxy_cluster(builder, source, sidecar, dest, "http"), timeout=c.seconds(DEFAULT_ROUTE_TIMEOUT_S)))


def tls_fallback(builder: EgressBuilder, source: ServiceInstance, sidecar: Resource) -> str | None:
    """The cluster a TLS egress listener forwards undeclared server names to, with an egress proxy (else None)."""
    dest = egress_proxy(sidecar)
    return None if dest is None else proxy_cluster(builder, source, sidecar, dest, "tls")


__all__ = ["egress_proxy", "http_fallback", "proxy_cluster", "tls_fallback", "to_gateway"]
