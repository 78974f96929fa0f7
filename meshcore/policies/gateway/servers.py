"""A Gateway's servers as Envoy config (pure): one listener per (bind address, port) of an ingress gateway, a TLS
filter chain per HTTPS server (told apart by SNI) or one plaintext chain, and a route configuration whose virtual
hosts are the servers' hosts, routed by the VirtualServices bound to the Gateway. A PASSTHROUGH server's chains
(SNI-matched tcp_proxy, no TLS terminated) come from :mod:`.passthrough`.

Virtual hosts: one per host a bound VirtualService and a server share (``*.example.com`` on the server and
``shop.example.com`` in the VirtualService: ``shop.example.com``), with that VirtualService's ``http[]`` routes (the
first by (namespace, name) wins a host); a server host no VirtualService routes gets a virtual host without routes
(404, as in Istio). The connection manager strips the Host's port before matching (``strip_any_host_port``) and,
being the mesh's edge, sets ``x-forwarded-for`` from the peer (``use_remote_address``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from ... import naming
from ...catalog.model import ServiceInstance
from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.listeners import HCM, TLS_INSPECTOR, http_connection_manager
from .schema import OPTIONAL_MUTUAL
from .spec import ISTIO_MUTUAL, HostRef, Server, ServerTls

TLS_SOCKET = "envoy.transport_sockets.tls"
_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO, "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1, "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}
_SAN_TYPES = (common_pb2.SubjectAltNameMatcher.DNS, common_pb2.SubjectAltNameMatcher.URI,
              common_pb2.SubjectAltNameMatcher.EMAIL, common_pb2.SubjectAltNameMatcher.IP_ADDRESS)


def listener_name(bind: str, port: int) -> str:
    """``gateway:<bind address>:<port>``; its route configuration has the same name."""
    return f"gateway:{bind}:{port}"


@dataclass
class BoundServer:
    """A server of a Gateway selecting this gateway instance."""

    gateway: Resource
    server: Server

    @property
    def ref(self) -> str:
        return f"{self.gateway.namespace}/{self.gateway.name}"

    def where(self) -> str:
        return f"Gateway {self.ref} server {self.server.name or self.server.port_name or self.server.port}"


@dataclass
class Port:
    """Every server of one (bind address, port) of a gateway instance."""

    bind: str
    port: int
    servers: list[BoundServer] = field(default_factory=list)

    @property
    def name(self) -> str:
        return listener_name(self.bind, self.port)

    @property
    def tls(self) -> bool:
        """The port's clients speak TLS (terminated here or passed through): its chains match by SNI."""
        return any(b.server.speaks_tls for b in self.servers)

    @property
    def http(self) -> bool:
        """Some server of the port routes HTTP here (plaintext or TLS terminated): it has a route configuration."""
        return any(b.server.routes_http for b in self.servers)

    @property
    def family(self) -> str:
        """What tells the port's servers apart: ``TLS`` (SNI), else ``plaintext HTTP`` or ``plaintext TCP``."""
        return "TLS" if self.tls else "plaintext HTTP" if self.http else "plaintext TCP"


# --- TLS -------------------------------------------------------------------------------------------


def _client_validation(tls: ServerTls, snapshot: MeshSnapshot) -> common_pb2.CertificateValidationContext:
    validation = common_pb2.CertificateValidationContext(
        verify_certificate_hash=list(tls.verify_certificate_hash),
        verify_certificate_spki=list(tls.verify_certificate_spki),
    )
    if tls.mode == ISTIO_MUTUAL:
        validation.match_typed_subject_alt_names.extend(
            c.uri_san(regex=c.workload_san_regex(td)) for td in c.peer_trust_domains(snapshot))
    for san in tls.subject_alt_names:  # Istio matches the name against any SAN of the client's certificate
        validation.match_typed_subject_alt_names.extend(
            common_pb2.SubjectAltNameMatcher(san_type=t, matcher=string_pb2.StringMatcher(exact=san)) for t in _SAN_TYPES)
    if tls.ca_certificates:
        validation.trusted_ca.filename = tls.ca_certificates
    if tls.ca_crl:
        validation.crl.filename = tls.ca_crl
    return validation


def downstream_tls(tls: ServerTls, snapshot: MeshSnapshot, proxy: ProxyInfo,
                   instance: ServiceInstance) -> tls_pb2.DownstreamTlsContext:
    """The server's TLS: its certificate files, or the gateway's own SVID from the mesh CA (delivered like a
    sidecar's); with MUTUAL, OPTIONAL_MUTUAL and ISTIO_MUTUAL, client certificates verified against
    ``caCertificates`` or the mesh's trust bundle."""
    params = common_pb2.TlsParameters(
        tls_minimum_protocol_version=_VERSIONS[tls.min_protocol_version or "TLSV1_2"],
        cipher_suites=list(tls.cipher_suites),
    )
    if tls.max_protocol_version:
        params.tls_maximum_protocol_version = _VERSIONS[tls.max_protocol_version]
    common = tls_pb2.CommonTlsContext(tls_params=params, alpn_protocols=list(c.MESH_ALPN))
    if tls.certificates:
        common.tls_certificates.extend(
            common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(filename=cert),
                                   private_key=base_pb2.DataSource(filename=key))
            for cert, key in tls.certificates)
    else:
        common.tls_certificate_sds_secret_configs.append(c.file_sds(naming.svid_secret(instance.service), proxy))
    out = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    common = out.common_tls_context  # the constructor copied it: the client checks below go on out's own
    if tls.mode in ("MUTUAL", OPTIONAL_MUTUAL, ISTIO_MUTUAL):
        validation = _client_validation(tls, snapshot)
        if tls.ca_certificates:
            common.validation_context.CopyFrom(validation)
        else:
            common.combined_validation_context.CopyFrom(tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=validation,
                validation_context_sds_secret_config=c.file_sds(naming.trust_bundle_secret(snapshot.trust_domain),
                                                                proxy)))
        out.require_client_certificate.CopyFrom(wrappers_pb2.BoolValue(value=tls.mode != OPTIONAL_MUTUAL))
    return out


# --- listeners --------------------------------------------------------------------------------------


def _hcm(snapshot: MeshSnapshot, port: Port):
    hcm = http_connection_manager(port.name, port.name, inbound=False,
                                  path_normalization=snapshot.settings.path_normalization)
    hcm.strip_any_host_port = True
    hcm.use_remote_address.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return hcm


def server_names(server: Server) -> list[str]:
    """SNI names of a TLS server's chain; empty (any name) when one of its hosts is ``*``."""
    hosts = [h.host for h in server.hosts]
    return [] if "*" in hosts else sorted(set(hosts))


def gateway_listener(snapshot: MeshSnapshot, proxy: ProxyInfo, instance: ServiceInstance, port: Port,
                     passthrough: Sequence[c.ChainDraft] = (), tcp: Sequence[c.ChainDraft] = ()) -> c.ListenerDraft:
    """The listener of one (bind, port): a plaintext HTTP chain or the ``tcp`` chain of its TCP servers, or one TLS
    chain per HTTPS server (SNI), the ``passthrough`` chains of its PASSTHROUGH servers (:mod:`.passthrough`) and the
    ``tcp`` chains of its TLS servers terminated here (:mod:`.tcp`)."""
    listener = listener_pb2.Listener(name=port.name, address=c.socket_address(port.bind, port.port),
                                     traffic_direction=base_pb2.OUTBOUND)
    chains: list[c.ChainDraft] = []
    if not port.tls:
        if port.http:
            chains.append(c.ChainDraft(listener_components_pb2.FilterChain(name="http"),
                                       [c.NetworkFilter(HCM, _hcm(snapshot, port))]))
        chains.extend(tcp)
    else:
        listener.listener_filters.add(name=TLS_INSPECTOR, typed_config=c.pack(tls_inspector_pb2.TlsInspector()))
        chains.extend(passthrough)
        chains.extend(tcp)
        for b in port.servers:
            if not b.server.routes_http:
                continue
            tls = b.server.tls or ServerTls()
            chain = listener_components_pb2.FilterChain(
                name=f"{b.ref}/{b.server.name or b.server.port_name or b.server.port}",
                filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=server_names(b.server)),
                transport_socket=c.transport_socket(TLS_SOCKET, downstream_tls(tls, snapshot, proxy, instance)),
            )
            chains.append(c.ChainDraft(chain, [c.NetworkFilter(HCM, _hcm(snapshot, port))]))
    return c.ListenerDraft(listener, chains)


# --- routes -----------------------------------------------------------------------------------------


def host_intersection(server_host: str, vs_host: str) -> str | None:
    """The hosts a server's ``server_host`` and a VirtualService's ``vs_host`` both cover, as one domain (the more
    specific one), or None when they share none."""
    if server_host == vs_host or vs_host == "*":
        return server_host
    if server_host == "*":
        return vs_host
    for wide, narrow in ((server_host, vs_host), (vs_host, server_host)):
        if wide.startswith("*.") and narrow.endswith(wide[1:]) and len(narrow) > len(wide) - 1:
            return narrow
    return None


def namespace_ok(ref: HostRef, gateway: Resource, vs: Resource) -> bool:
    """Whether a server host ``ref`` (``<namespace>/<host>``) of ``gateway`` lets VirtualService ``vs`` route it."""
    if ref.namespace == "*":
        return True
    return vs.namespace == (gateway.namespace if ref.namespace == "." else ref.namespace)


RoutesFor = Callable[[Resource, str], list[route_components_pb2.Route]]


def gateway_routes(port: Port, bound: Sequence[tuple[Resource, tuple[str, ...]]], routes_for: RoutesFor,
                   ) -> route_pb2.RouteConfiguration:
    """The route configuration of one gateway port. ``bound``: the VirtualServices with the Gateways they bind to
    (``<ns>/<name>``), by (namespace, name); ``routes_for(vs, gateway ref)``: the VirtualService's routes there."""
    config = route_pb2.RouteConfiguration(name=port.name)
    seen: dict[str, route_components_pb2.VirtualHost] = {}
    for b in port.servers:
        if not b.server.routes_http:  # routed by SNI or tcp[] rules, not HTTP (:mod:`.passthrough`, :mod:`.tcp`)
            continue
        redirect = b.server.tls is not None and b.server.tls.https_redirect
        for ref in b.server.hosts:
            matched = False
            for vs, gateways in bound:
                if b.ref not in gateways or not namespace_ok(ref, b.gateway, vs):
                    continue
                for vs_host in vs.typed.hosts:
                    domain = host_intersection(ref.host, vs_host)
                    if domain is None:
                        continue
                    matched = True
                    if domain not in seen:
                        seen[domain] = route_components_pb2.VirtualHost(name=domain, domains=[domain],
                                                                        routes=routes_for(vs, b.ref))
                        if redirect:
                            seen[domain].require_tls = route_components_pb2.VirtualHost.ALL
            if not matched and ref.host not in seen:
                seen[ref.host] = route_components_pb2.VirtualHost(name=ref.host, domains=[ref.host])
                if redirect:
                    seen[ref.host].require_tls = route_components_pb2.VirtualHost.ALL
    # Most specific first is Envoy's own order for domains; keep the output stable by name.
    config.virtual_hosts.extend(seen[d] for d in sorted(seen))
    return config


__all__ = ["BoundServer", "Port", "listener_name", "downstream_tls", "gateway_listener", "gateway_routes",
           "host_intersection", "namespace_ok", "server_names"]
