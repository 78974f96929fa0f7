"""Gateway: the listeners, TLS and routes of the servers of every Gateway that selects an ingress gateway instance
of this proxy (:mod:`.servers`), routed by the VirtualServices bound to those Gateways (``gateways:``), with the
clusters and endpoints their destinations need.

A Gateway change is a listener update (new ports, certificates, SNI names); a change of the VirtualServices bound to
it is a route update. PASSTHROUGH servers are routed by SNI by those VirtualServices' ``tls[]`` rules
(:mod:`.passthrough`); TCP and MONGO servers, and TLS servers terminated here, by their ``tcp[]`` rules
(:mod:`.tcp`). The gateway's own upstream listeners (Consul's ingress gateway ``upstreams``) stay as they are.
Servers that cannot be built refuse the proxy's config (it keeps its last good one): two Gateways serving one host on
one TLS port, a port that is already a listener of this proxy, a missing subset.
"""

from __future__ import annotations

from functools import partial

from ...catalog.definitions import INGRESS_GATEWAY
from ...errors import RouteProblem, SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet, MissingSubset
from ...xds.generate import vocab as c
from ...xds.generate.routes import DEFAULT_ROUTE_TIMEOUT_S
from ...xds.generate.vocab import LISTENER, ROUTE
from ..destination_rule.clusters import route_hash_policies
from ..destination_rule.spec import TrafficPolicy
from ..virtual_service import schema as vs_schema
from ..virtual_service.cors import CORS_FILTER, ensure_cors_filter
from ..virtual_service.ports import destination_policy, port_cluster
from ..virtual_service.routes import http_routes
from .schema import KIND_NAME, gateway_ref, gateways_for
from .passthrough import passthrough_chains, passthrough_problem
from .servers import BoundServer, Port, gateway_listener, gateway_routes, server_names
from .tcp import plaintext_chains, terminated_chains
from .spec import spec_of

KIND = KIND_NAME


def _ports(snapshot: MeshSnapshot, instance) -> tuple[list[Port], list[str]]:
    ports: dict[tuple[str, int], Port] = {}
    problems: list[str] = []
    for gw in gateways_for(snapshot.resources_of(KIND), instance.labels):
        for server in spec_of(gw).servers:
            bind = server.bind or instance.mesh_address or instance.address
            port = ports.setdefault((bind, server.port), Port(bind, server.port))
            bound = BoundServer(gw, server)
            family = "TLS" if server.speaks_tls else "plaintext HTTP" if server.routes_http else "plaintext TCP"
            if port.servers and port.family != family:
                problems.append(f"{bound.where()}: port {server.port} already serves {port.family} for "
                                f"{port.servers[0].where()}")
                continue
            if server.speaks_tls:
                names = set(server_names(server)) or {"*"}
                for other in port.servers:
                    clash = names & (set(server_names(other.server)) or {"*"})
                    if clash:
                        problems.append(f"{bound.where()}: host(s) {', '.join(sorted(clash))} on port {server.port} "
                                        f"already served by {other.where()}")
                        break
                else:
                    port.servers.append(bound)
                continue
            port.servers.append(bound)
    return [ports[k] for k in sorted(ports)], problems


def _policy_of(clusters: ClusterSet, instance, dest) -> TrafficPolicy:
    """A passthrough destination's traffic policy as the gateway ``instance`` sees it (its tunnel, idle timeout)."""
    return destination_policy(clusters, dest.host, dest.subset, dest.port, instance)


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    if not snapshot.resources_of(KIND):
        return
    gateways = [i for i in c.local_instances(snapshot, proxy) if i.kind == INGRESS_GATEWAY]
    if not gateways:
        return
    services = sorted(snapshot.resources_of(vs_schema.KIND_NAME), key=lambda r: (r.namespace, r.name))
    bound = [(vs, tuple(gateway_ref(vs.namespace, g) for g in vs.typed.gateways if g != "mesh")) for vs in services]
    bound = [(vs, refs) for vs, refs in bound if refs]
    clusters = ClusterSet(snapshot, proxy, resources)
    taken = {(l.message.address.socket_address.address, l.message.address.socket_address.port_value)
             for l in resources[LISTENER]}
    problems: list[str] = []
    for instance in gateways:
        ports, clashes = _ports(snapshot, instance)
        problems += clashes
        for port in ports:
            if (port.bind, port.port) in taken:
                problems.append(f"{port.servers[0].where()}: {port.bind}:{port.port} is already a listener of this "
                                "proxy (an upstream's local_bind_port?); pick another port")
                continue

            def routes_for(vs, ref, _inst=instance, _port=port.port):
                def cluster_for(dest: str, subset: str | None, dest_port: int | None = None) -> str:
                    if dest_port is not None:  # a VirtualService destination.port
                        return port_cluster(clusters, _inst, dest, subset, dest_port)
                    return clusters.ensure(_inst, dest, subset)

                def hash_for(dest: str, subset: str | None, dest_port: int | None = None) -> list:
                    return route_hash_policies(destination_policy(clusters, dest, subset, dest_port, _inst))

                return http_routes(vs, cluster_for, hash_for, DEFAULT_ROUTE_TIMEOUT_S,
                                   (_inst.labels, _inst.namespace), gateway=ref, port=_port, services=services)

            def passthrough_cluster(dest, _inst=instance, _port=port, _problems=problems) -> str:
                problem = passthrough_problem(snapshot, dest.host, dest.port)
                if problem is not None:
                    _problems.append(f"{_port.servers[0].where()}: {problem}")
                if dest.port is not None:  # the destination's port picks the cluster (a ServiceEntry's port)
                    return port_cluster(clusters, _inst, dest.host, dest.subset, dest.port)
                return clusters.ensure(_inst, dest.host, dest.subset)

            def tcp_cluster(dest, _inst=instance) -> str:
                if dest.port is not None:
                    return port_cluster(clusters, _inst, dest.host, dest.subset, dest.port)
                return clusters.ensure(_inst, dest.host, dest.subset)

            caller = (instance.labels, instance.namespace)
            try:
                route = gateway_routes(port, bound, routes_for) if port.http else None
                passthrough = passthrough_chains(port, bound, passthrough_cluster, caller,
                                                 partial(_policy_of, clusters, instance))
                tcp = (terminated_chains(snapshot, proxy, instance, port, bound, tcp_cluster, caller) if port.tls
                       else plaintext_chains(port, bound, tcp_cluster, caller) if not port.http else [])
            except (MissingSubset, RouteProblem) as exc:
                problems.append(f"{port.servers[0].where()}: {exc}")
                continue
            listener = gateway_listener(snapshot, proxy, instance, port, passthrough, tcp)
            if not listener.filter_chains:  # PASSTHROUGH or TCP servers no rule routes yet: nothing to listen for
                continue
            if route is not None and any(CORS_FILTER in r.typed_per_filter_config
                                         for vh in route.virtual_hosts for r in vh.routes):
                for _chain, hcm in listener.http_managers():
                    ensure_cors_filter(hcm)
            taken.add((port.bind, port.port))
            resources[LISTENER].append(listener)
            if route is not None:
                resources[ROUTE].append(route)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)
    resources[LISTENER].sort(key=lambda l: l.name)
    resources[ROUTE].sort(key=lambda r: r.name)


__all__ = ["apply"]
