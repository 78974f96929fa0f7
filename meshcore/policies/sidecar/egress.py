"""A Sidecar's egress listeners (pure): HTTP routed by Host, TLS passed through and routed by SNI.

An egress listener (``egress[].port``, bound on ``bind``, 127.0.0.1 by default) serves the ServiceEntry hosts its
``hosts`` list. Apps use it explicitly: as an HTTP proxy (``http_proxy=http://127.0.0.1:15080``) or with the
destination's name in the Host header, and for TLS by connecting to it with the destination's name as SNI.

* HTTP: one virtual host per ServiceEntry host and HTTP port (``host:port``; the bare host on the first port),
  whose routes are the host's VirtualService ``http[]`` rules, else one route to the host (the mesh's default
  timeout and retries). Any other Host: 502 under REGISTRY_ONLY; under ALLOW_ANY Envoy's dynamic forward proxy
  resolves the Host and forwards there (Istio's PassthroughCluster for a proxy that sees no original destination).
* TLS (or HTTPS): the TLS inspector reads the SNI; the host's VirtualService ``tls[]`` rules come first, then one
  chain per ServiceEntry host with a TLS port. Any other name: the blackhole cluster (connection closed) under
  REGISTRY_ONLY, the SNI dynamic forward proxy to ``<sni>:443`` under ALLOW_ANY.
* ALLOW_ANY with ``outboundTrafficPolicy.egressProxy``: those undeclared destinations go to the egress proxy instead
  (:mod:`.egress_proxy`).

Destinations that are ServiceEntry hosts get clusters ``egress:<host>:<port>`` (``|<subset>``, endpoints by the
DestinationRule subset's labels) with the host's DestinationRule policy (``@<namespace>/<name>`` when the rule is one
whose workloadSelector picks the calling workload: each workload of a node its own rule's); a mesh service named as a destination is
reached over mTLS like any upstream (and must be among the Sidecar's hosts).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp_http_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2 as dfp_sni_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from ... import naming
from ...catalog.model import ServiceInstance
from ...errors import EgressProblem, MissingSubset
from ...resources.model import Resource
from ...snapshot import MeshSnapshot
from ...traffic.clusters import ClusterSet
from ...xds.generate import vocab as c
from ...xds.generate.clusters import CONNECT_TIMEOUT_S
from ...xds.generate.listeners import HCM, TCP_PROXY, TLS_INSPECTOR, http_connection_manager
from ...xds.generate.routes import DEFAULT_ROUTE_TIMEOUT_S, default_retry_policy
from ...xds.generate.sidecar_scope import ALLOW_ANY, allows, host_matches
from ...xds.generate.vocab import CLUSTER
from ..destination_rule.clusters import apply_policy, route_hash_policies
from ..destination_rule.locality_weights import weight_cluster
from ..destination_rule.schema import rule_for
from ..destination_rule.spec import spec_of as dr_spec
from ..service_entry.clusters import originating_cluster
from ..service_entry.spec import spec_of as entry_spec
from ..virtual_service.ports import destination_policy, port_cluster
from ..virtual_service.routes import http_routes
from ..virtual_service.schema import service_for
from ..virtual_service.spec import spec_of as vs_spec
from ..virtual_service.spec import Destination, RouteDestination
from ..virtual_service.tls_routes import chain_options, tls_chains
from .egress_proxy import http_fallback, tls_fallback, to_gateway
from .spec import EgressListener

DNS_CACHE = "meshcore_egress"
DFP_HTTP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
DFP_SNI_FILTER = "envoy.filters.network.sni_dynamic_forward_proxy"
DFP_CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
PASSTHROUGH_TLS_PORT = 443
"""Where an ALLOW_ANY TLS egress listener forwards a server name nothing declares (SNI carries no port)."""
NOT_REGISTERED = ("meshcore: this destination is not declared in the mesh (the outbound traffic policy is "
                  "REGISTRY_ONLY); declare it with a ServiceEntry\n")


def dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(name=DNS_CACHE, dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED)


def passthrough_cluster() -> cluster_pb2.Cluster:
    """Envoy's dynamic forward proxy cluster: the destination the Host or SNI names, resolved by Envoy."""
    return cluster_pb2.Cluster(
        name=naming.EGRESS_PASSTHROUGH_CLUSTER,
        connect_timeout=c.seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name=DFP_CLUSTER_TYPE, typed_config=c.pack(dfp_cluster_pb2.ClusterConfig(dns_cache_config=dns_cache()))),
    )


def blackhole_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=naming.EGRESS_BLACKHOLE_CLUSTER, type=cluster_pb2.Cluster.STATIC,
                               connect_timeout=c.seconds(CONNECT_TIMEOUT_S))


class EgressBuilder:
    """The egress listeners of one proxy: their clusters added to ``resources`` on demand."""

    def __init__(self, snapshot: MeshSnapshot, resources: dict, clusters: ClusterSet, entries: dict[str, Resource]):
        self.snapshot, self.resources, self.clusters, self.entries = snapshot, resources, clusters, entries
        self._names = {cl.name for cl in resources[CLUSTER]}

    def _add(self, cluster: cluster_pb2.Cluster) -> None:
        if cluster.name not in self._names:
            self._names.add(cluster.name)
            self.resources[CLUSTER].append(cluster)
            self.resources[CLUSTER].sort(key=lambda x: x.name)

    def visible(self, sidecar: Resource, listener: EgressListener) -> list[str]:
        """The ServiceEntry hosts ``listener`` serves (sorted)."""
        return [h for h in sorted(self.entries)
                if any(host_matches(p, sidecar.namespace, h, self.entries[h].namespace) for p in listener.hosts)]

    def cluster_for(self, source: ServiceInstance, sidecar: Resource, host: str, subset: str | None,
                    port: int | None, family: str) -> str:
        """The cluster a destination means on an egress listener of ``family`` (``http`` / ``tls``)."""
        entry = self.entries.get(host)
        if entry is None:
            if not allows(self.snapshot, sidecar, host):
                raise EgressProblem(f"destination {host!r} is not among the hosts of Sidecar "
                                    f"{sidecar.namespace}/{sidecar.name}; add it to egress[].hosts")
            return self.clusters.ensure(source, host, subset)
        spec = entry_spec(entry)
        families = ("http",) if family == "http" else ("tls", "tcp")
        chosen = spec.port(port, families) or (spec.port(None, families) if port is None else None)
        if chosen is None:
            raise EgressProblem(f"ServiceEntry {entry.namespace}/{entry.name} has no {family.upper()} port"
                                + (f" {port}" if port else "") + f" for host {host!r}")
        chosen_rule = rule_for(self.snapshot.resources_of("DestinationRule"), host, (source.labels, source.namespace))
        own = (f"{chosen_rule.namespace}/{chosen_rule.name}"  # a rule whose workloadSelector picks the caller
               if chosen_rule is not None and dr_spec(chosen_rule).selector else None)
        name = naming.egress_cluster(host, chosen.number, subset, own)
        if name not in self._names:
            labels = None
            if subset is not None:
                rule = self.clusters.rule(host, source)
                found = rule.subset(subset) if rule is not None else None
                if found is None:
                    from ..virtual_service.schema import subset_problem

                    raise MissingSubset(subset_problem(self.snapshot.resources_of("DestinationRule"), host, subset))
                labels = dict(found.labels)
            cluster = originating_cluster(self.snapshot, self.resources, spec, host, chosen, name, subset, labels,
                                          (source.labels, source.namespace))
            policy = destination_policy(self.clusters, host, subset, chosen.number, source)  # this port's settings
            apply_policy(cluster, policy)
            weight_cluster(self.snapshot, self.clusters.proxy, cluster, policy)
            self._add(cluster)
        return name

    def http(self, source: ServiceInstance, sidecar: Resource, listener: EgressListener, mode: str
             ) -> tuple[c.ListenerDraft, route_pb2.RouteConfiguration]:
        assert listener.port is not None
        name = naming.egress_listener(listener.bind, listener.port.number)
        caller = (source.labels, source.namespace)
        vhosts = []
        for host in self.visible(sidecar, listener):
            ports = [p for p in entry_spec(self.entries[host]).ports if p.family == "http"]
            for k, port in enumerate(ports):
                def cluster_for(d: str, s: str | None, p: int | None = None, _n: int = port.number) -> str:
                    if p is not None and d not in self.entries:  # a mesh service's destination.port
                        if not allows(self.snapshot, sidecar, d):  # in the Sidecar's scope?
                            self.cluster_for(source, sidecar, d, s, None, "http")  # raises with the reason
                        return port_cluster(self.clusters, source, d, s, p)
                    return self.cluster_for(source, sidecar, d, s, p or _n, "http")

                def entry_port(_n: int = port.number) -> tuple[int, ...]:  # a match port may name it
                    return (_n,)

                vs = service_for(self.snapshot.resources_of("VirtualService"), host)
                if vs is not None and vs_spec(vs).http:
                    routes = http_routes(vs, cluster_for,
                                         lambda d, s, p=None: route_hash_policies(self.clusters.policy(d, s, source)),
                                         DEFAULT_ROUTE_TIMEOUT_S, caller, port=listener.port.number,
                                         services=self.snapshot.resources_of("VirtualService"),
                                         host_ports=entry_port)
                else:
                    action = rc.RouteAction(cluster=cluster_for(host, None), timeout=c.seconds(DEFAULT_ROUTE_TIMEOUT_S),
                                            retry_policy=default_retry_policy())
                    routes = [rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)]
                domains = [f"{host}:{port.number}"] + ([host] if k == 0 else [])
                vhosts.append(rc.VirtualHost(name=f"{host}:{port.number}", domains=domains, routes=routes))
        proxied = http_fallback(self, source, sidecar) if mode == ALLOW_ANY else None  # egressProxy
        if proxied is not None:
            fallback = proxied
        elif mode == ALLOW_ANY:
            self._add(passthrough_cluster())
            fallback = rc.Route(name="passthrough", match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(
                cluster=naming.EGRESS_PASSTHROUGH_CLUSTER, timeout=c.seconds(DEFAULT_ROUTE_TIMEOUT_S)))
        else:
            fallback = rc.Route(name="not-registered", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(
                status=502, body=base_pb2.DataSource(inline_string=NOT_REGISTERED)))
        vhosts.append(rc.VirtualHost(name="unregistered", domains=["*"], routes=[fallback]))
        route_config = route_pb2.RouteConfiguration(name=name, virtual_hosts=vhosts,
                                                    validate_clusters=wrappers_pb2.BoolValue(value=False))
        hcm = http_connection_manager(name, name, inbound=False, path_normalization=self.snapshot.settings.path_normalization)
        if mode == ALLOW_ANY and proxied is None:
            hcm.http_filters.insert(len(hcm.http_filters) - 1, hcm_pb2.HttpFilter(
                name=DFP_HTTP_FILTER, typed_config=c.pack(dfp_http_pb2.FilterConfig(dns_cache_config=dns_cache()))))
        draft = c.ListenerDraft(listener_pb2.Listener(
            name=name, address=c.socket_address(listener.bind, listener.port.number),
            traffic_direction=base_pb2.OUTBOUND), [c.ChainDraft(filters=[c.NetworkFilter(HCM, hcm)])])
        return draft, route_config

    def tls(self, source: ServiceInstance, sidecar: Resource, listener: EgressListener, mode: str) -> c.ListenerDraft:
        assert listener.port is not None
        name = naming.egress_listener(listener.bind, listener.port.number)
        caller = (source.labels, source.namespace)
        chains: list[c.ChainDraft] = []
        claimed: set[str] = set()
        hosts = self.visible(sidecar, listener)
        done: set[tuple[str, str]] = set()
        for host in hosts:
            vs = service_for(self.snapshot.resources_of("VirtualService"), host)
            if vs is None or (vs.namespace, vs.name) in done or not vs_spec(vs).tls:
                continue
            done.add((vs.namespace, vs.name))
            chains += tls_chains(f"{vs.namespace}/{vs.name}", vs_spec(vs),
                                 lambda d: to_gateway(self, source, sidecar, d)  # an egress gateway's port
                                 or self.cluster_for(source, sidecar, d.host, d.subset, d.port, "tls"),
                                 caller, listener.port.number, claimed,
                                 policy_for=lambda d: destination_policy(self.clusters, d.host, d.subset, d.port, source))
        for host in hosts:
            if host in claimed or entry_spec(self.entries[host]).port(None, ("tls",)) is None:
                continue
            claimed.add(host)
            cluster = self.cluster_for(source, sidecar, host, None, None, "tls")
            chain = listener_components_pb2.FilterChain(
                name=host, filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=[host]))
            proxy = _single_tcp(f"{name}/{host}", cluster)
            chain_options(proxy, host, (RouteDestination(Destination(host)),),  # its tunnel, idle timeout
                          lambda d: destination_policy(self.clusters, d.host, d.subset, d.port, source))
            chains.append(c.ChainDraft(chain, [c.NetworkFilter(TCP_PROXY, proxy)]))
        default = listener_components_pb2.FilterChain(name="unregistered")
        proxy = tls_fallback(self, source, sidecar) if mode == ALLOW_ANY else None  # egressProxy
        if proxy is not None:
            chains.append(c.ChainDraft(default, [c.NetworkFilter(TCP_PROXY, _single_tcp(f"{name}/egress-proxy", proxy))]))
        elif mode == ALLOW_ANY:
            self._add(passthrough_cluster())
            chains.append(c.ChainDraft(default, [
                c.NetworkFilter(DFP_SNI_FILTER, dfp_sni_pb2.FilterConfig(dns_cache_config=dns_cache(),
                                                                         port_value=PASSTHROUGH_TLS_PORT)),
                c.NetworkFilter(TCP_PROXY, _single_tcp(f"{name}/passthrough", naming.EGRESS_PASSTHROUGH_CLUSTER))]))
        else:
            self._add(blackhole_cluster())
            chains.append(c.ChainDraft(default, [
                c.NetworkFilter(TCP_PROXY, _single_tcp(f"{name}/blackhole", naming.EGRESS_BLACKHOLE_CLUSTER))]))
        return c.ListenerDraft(listener_pb2.Listener(
            name=name, address=c.socket_address(listener.bind, listener.port.number),
            traffic_direction=base_pb2.OUTBOUND,
            listener_filters=[listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=c.pack(tls_inspector_pb2.TlsInspector()))]), chains)


def _single_tcp(stat_prefix: str, cluster: str) -> tcp_proxy_pb2.TcpProxy:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix.replace(":", "_").replace(".", "_").replace("/", "_"),
                                  cluster=cluster)


__all__ = ["EgressBuilder", "EgressProblem", "passthrough_cluster", "blackhole_cluster", "dns_cache",
           "NOT_REGISTERED", "PASSTHROUGH_TLS_PORT"]
