"""ServiceEntry: the upstreams that name a host outside the mesh reach it directly, not over mesh mTLS.

The generators built every declared upstream as a mesh service (an EDS cluster over mTLS, an HTTP or TCP
listener by the catalog's protocol). For an upstream whose ``destination_name`` a ServiceEntry declares, this
plugin puts in its place:

* the ServiceEntry's cluster under the same name (``outbound:<host>|<source>``: routes, DestinationRule and
  VirtualService find it as any upstream's), on the entry's port numbered like the upstream's local port, else its
  first port (:func:`~.clusters.upstream_port`);
* for a TLS or TCP port (HTTPS, TLS, TCP, ...), a tcp_proxy listener (the app's own TLS passes through);
* no ClusterLoadAssignment: the endpoints are the cluster's own.

The egress listeners a Sidecar declares (``egress[].port``) are the Sidecar plugin's; they reach ServiceEntry
hosts through :mod:`.clusters` too.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.listeners import TCP_PROXY
from ...xds.generate.vocab import CLUSTER, ENDPOINT, LISTENER, ROUTE
from .clusters import host_index, originating_cluster, upstream_port
from .schema import KIND_NAME
from .spec import spec_of

KIND = KIND_NAME


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    if not snapshot.resources_of(KIND):
        return
    index = host_index(snapshot)
    clusters = {cl.name: i for i, cl in enumerate(resources[CLUSTER])}
    listeners = {draft.name: draft for draft in resources[LISTENER]}
    dropped_routes: set[str] = set()
    dropped_endpoints: set[str] = set()
    ports: dict[str, int] = {}
    problems: list[str] = []
    for src, up in c.outbound_bindings(snapshot, proxy):
        entry = index.get(up.destination_name)
        if entry is None:
            continue
        spec = spec_of(entry)
        port = upstream_port(spec, up.local_bind_port)
        name = naming.upstream_cluster(up.destination_name, src.service)
        if ports.setdefault(name, port.number) != port.number:
            problems.append(f"service {src.id}: two upstreams name {up.destination_name!r} on different ports of "
                            f"ServiceEntry {entry.namespace}/{entry.name} ({ports[name]} and {port.number}); one "
                            "upstream per host and service: reach the other port through a Sidecar egress listener")
            continue
        cluster = originating_cluster(snapshot, resources, spec, up.destination_name, port, name,
                                      workload=(src.labels, src.namespace))
        if name in clusters:
            resources[CLUSTER][clusters[name]] = cluster
        dropped_endpoints.add(naming.upstream_endpoints(up.destination_name, up.datacenter))
        if port.family == "http":
            continue
        listener = listeners.get(naming.outbound_listener(up.destination_name, up.local_bind_port))
        if listener is None:
            continue
        for chain in listener.filter_chains:
            chain.filters[:] = [c.NetworkFilter(TCP_PROXY, tcp_proxy_pb2.TcpProxy(
                stat_prefix=listener.name.replace(":", "_").replace(".", "_"), cluster=name))]
        dropped_routes.add(naming.outbound_route(up.destination_name, up.local_bind_port))
    if problems:
        raise SnapshotInvalid(proxy.node, problems)
    still_eds = {cl.eds_cluster_config.service_name for cl in resources[CLUSTER]
                 if cl.type == cluster_pb2.Cluster.EDS}
    resources[ENDPOINT][:] = [cla for cla in resources[ENDPOINT]
                              if cla.cluster_name not in dropped_endpoints or cla.cluster_name in still_eds]
    resources[ROUTE][:] = [r for r in resources[ROUTE] if r.name not in dropped_routes]


def upstream_family(snapshot: MeshSnapshot, host: str, local_bind_port: int) -> str | None:
    """``http``, ``tls`` or ``tcp`` for an upstream naming a ServiceEntry host; None for a mesh service."""
    if "." not in host:
        return None
    entry = host_index(snapshot).get(host)
    return upstream_port(spec_of(entry), local_bind_port).family if entry is not None else None


__all__ = ["apply", "upstream_family"]
