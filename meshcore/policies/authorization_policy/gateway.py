"""AuthorizationPolicy at ingress gateways: a policy whose selector matches an ingress gateway instance (its labels:
``app`` = the gateway's service name, its meta, its tags; a mesh-wide policy in the root namespace selects it too,
as Istio's do) is enforced on the gateway's own listeners, before any route sends the request on: the listeners of
its Gateway servers (``gateway:<bind>:<port>``) and its upstream listeners (Consul's ingress gateway upstreams).

Where and how, as on a sidecar's inbound side (:mod:`.plugin`): the constant policy filters (AUDIT, DENY, ALLOW,
disabled until a route turns them on) go into each of those HTTP connection managers once a policy selects the
gateway, right before its fault filter, so after ``jwt_authn`` (RequestAuthentication selecting the gateway: the
rules read the verified token, ``requestPrincipals``, ``request.auth.claims[...]``) and after CORS (a preflight is
answered before authorization); the rules ride in the listener's route configuration, so a policy change applies to
the next request on every open connection. CUSTOM policies add the ``ext_authz`` pair before them. TCP servers of a
Gateway (TLS passthrough) get the network RBAC filters before their ``tcp_proxy``.

``ports`` / ``destination.port`` name the gateway's listener port (the server's ``port.number``), as in Istio.

The client's address: at a gateway the peer is the edge's own client (or a load balancer in front of it), so
``remoteIpBlocks`` / ``notRemoteIpBlocks`` and the ``remote.ip`` key are honoured there, on Envoy's ``remote_ip``:
the address Envoy derives from ``X-Forwarded-For`` with the gateway's trusted hops (the mesh config's
``defaultConfig.gatewayTopology.numTrustedProxies``, Istio's setting; 0 by default: the peer itself). Every HTTP
connection manager of a gateway that policies select uses the connection's address (``use_remote_address``), so a
client cannot name its own address in the header. ``ipBlocks`` stays the peer's address. On sidecars
``remoteIpBlocks`` is refused (:func:`sidecar_problems`): their peer is another proxy of the mesh, and nothing
there vouches for the header.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, cast

from google.protobuf import wrappers_pb2

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...catalog.definitions import INGRESS_GATEWAY
from ...catalog.model import ServiceInstance
from ...errors import SnapshotInvalid
from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from ...xds.generate.vocab import LISTENER, ROUTE
from ..gateway.schema import gateways_for
from ..gateway.servers import listener_name
from ..gateway.spec import spec_of as gateway_spec_of
from ._compiled import compiled_stages
from .rbac import rbac_stages
from .schema import KIND_NAME, policies_for
from .spec import REMOTE_IP, spec_of

GATEWAY_KIND = "Gateway"


def uses_remote_ip(policy: Resource) -> bool:
    """Whether a policy has ``remoteIpBlocks``, ``notRemoteIpBlocks`` or a ``remote.ip`` condition."""
    for rule in spec_of(policy).rules:
        conditions = [*rule.when, *(cond for block in rule.sources or () for cond in block)]
        if any(cond.attribute == REMOTE_IP for cond in conditions):
            return True
    return False


def sidecar_problems(selected: Sequence[Resource], instance: ServiceInstance) -> list[str]:
    """Why the policies selecting a sidecar's ``instance`` cannot be enforced there: ``remoteIpBlocks`` (the proxy's
    config is then refused; it keeps its last good one)."""
    return [f"AuthorizationPolicy {p.namespace}/{p.name}: remoteIpBlocks / remote.ip (the client's address from "
            f"X-Forwarded-For) are honoured at ingress gateways only, and it selects {instance.id}, a sidecar whose "
            "peer is a proxy of the mesh: use ipBlocks there, or narrow the selector to the gateway"
            for p in selected if uses_remote_ip(p)]


class _AtListener:
    """A gateway instance as the rules see it on one of its listeners: the listener's port (what ``ports`` and
    ``destination.port`` name at a gateway, as in Istio) and the chain's protocol; everything else the instance's."""

    __slots__ = ("_instance", "port", "protocol")

    def __init__(self, instance: ServiceInstance, port: int, protocol: str):
        self._instance, self.port, self.protocol = instance, port, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)


def _at(instance: ServiceInstance, port: int, protocol: str) -> ServiceInstance:
    return cast(ServiceInstance, _AtListener(instance, port, protocol))


def _insert_policy_filters(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """The constant policy filters into a gateway's (outbound-kind) ``hcm``, before its fault filter (else its
    router); nothing when they are there already."""
    if pf.has_policy_filters(hcm):
        return
    names = [f.name for f in hcm.http_filters]
    at = names.index(pf.FAULT) if pf.FAULT in names else len(names) - 1
    for i, f in enumerate(pf.inbound_policy_filters()):
        hcm.http_filters.insert(at + i, f)


def _servers(resources: Iterable[Resource], instance: ServiceInstance) -> list:
    return [server for gw in gateways_for([r for r in resources if r.kind == GATEWAY_KIND], instance.labels)
            for server in gateway_spec_of(gw).servers]


def listener_ports(resources: Iterable[Resource], instance: ServiceInstance) -> list[int]:
    """The ports ``ports`` / ``destination.port`` name at an ingress gateway instance: its listeners' (its Gateway
    servers' ``port.number`` and its upstreams' ``local_bind_port``), sorted."""
    return sorted({up.local_bind_port for up in instance.upstreams} | {s.port for s in _servers(resources, instance)})


def _listeners_of(snapshot: MeshSnapshot, instance: ServiceInstance, listeners: dict) -> list[c.ListenerDraft]:
    """The listeners of one gateway instance: its Gateway servers' and its upstreams'."""
    names = {naming.outbound_listener(up.destination_name, up.local_bind_port) for up in instance.upstreams}
    for server in _servers(snapshot.resources_of(GATEWAY_KIND), instance):
        names.add(listener_name(server.bind or instance.mesh_address or instance.address, server.port))
    return [listeners[n] for n in sorted(names) if n in listeners]


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    policies = snapshot.resources_of(KIND_NAME)
    if not policies:
        return
    gateways = [i for i in c.local_instances(snapshot, proxy) if i.kind == INGRESS_GATEWAY]
    if not gateways:
        return
    from .plugin import custom_authorization, secure_chain, secure_route  # the sidecar's enforcement, reused

    listeners = {l.name: l for l in resources[LISTENER]}
    routes = {r.name: r for r in resources[ROUTE]}
    problems: list[str] = []
    for inst in gateways:
        selected = policies_for(policies, inst.labels, inst.namespace)
        if not selected:
            continue
        for listener in _listeners_of(snapshot, inst, listeners):
            port = listener.message.address.socket_address.port_value
            http = _at(inst, port, "http")
            try:
                for chain in listener.filter_chains:
                    if any(isinstance(f.config, tcp_proxy_pb2.TcpProxy) for f in chain.filters):
                        tcp = _at(inst, port, "tcp")
                        secure_chain(chain, compiled_stages(policies, selected, tcp, snapshot.trust_domain,
                                                            rbac_stages), listener.name)
                stages = compiled_stages(policies, selected, http, snapshot.trust_domain, rbac_stages)
                route_names = []
                for _chain, hcm in listener.http_managers():
                    _insert_policy_filters(hcm)
                    hcm.use_remote_address.CopyFrom(wrappers_pb2.BoolValue(value=True))  # no client-named address
                    route_names.append(hcm.rds.route_config_name)
                for name in sorted(set(route_names)):
                    if name not in routes:
                        raise ValueError(f"listener {listener.name!r}: no route configuration {name!r} to put the "
                                         "rules in")
                    secure_route(routes[name], stages)
                if route_names:
                    problems += custom_authorization(snapshot, http, listener, selected, resources)
            except ValueError as exc:
                problems.append(f"AuthorizationPolicy not enforceable at the ingress gateway {inst.id}: {exc}")
    if problems:
        raise SnapshotInvalid(proxy.node, problems)  # fail closed: the gateway keeps its last good config


def set_trusted_hops(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    """The gateway's trusted X-Forwarded-For hops on every HTTP connection manager of its listeners (also without
    policies: access logs and ``x-envoy-external-address`` read the same client address)."""
    trusted = snapshot.settings.gateway_trusted_proxies
    if not trusted:
        return
    listeners = {l.name: l for l in resources[LISTENER]}
    for inst in c.local_instances(snapshot, proxy):
        if inst.kind == INGRESS_GATEWAY:
            for listener in _listeners_of(snapshot, inst, listeners):
                for _chain, hcm in listener.http_managers():
                    hcm.use_remote_address.CopyFrom(wrappers_pb2.BoolValue(value=True))
                    hcm.xff_num_trusted_hops = trusted


def apply_all(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    """The plugin entry (after Gateway): trusted hops, then the policies."""
    set_trusted_hops(snapshot, proxy, resources)
    apply(snapshot, proxy, resources)


__all__ = ["apply", "apply_all", "listener_ports", "set_trusted_hops", "sidecar_problems", "uses_remote_ip"]
