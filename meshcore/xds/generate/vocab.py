"""The builder vocabulary: what every generator and policy plugin speaks (public; no IO, clock or logging).

* The xDS type URLs, defined once in :mod:`meshcore.xds._typeurls` and re-exported here.
* :func:`pack`, the one way meshcore turns a message into an ``Any``: deterministic serialization
  (``SerializeToString(deterministic=True)``: map entries sorted), so equal configs are equal bytes.
* :func:`is_type`, the one type test of a packed ``Any`` (``Any.Is`` against the message's descriptor).
* :class:`ListenerDraft`, :class:`ChainDraft`, :class:`NetworkFilter`: a listener while it is being built.
  Its network filters' configs (HTTP connection managers, tcp_proxy, RBAC, rate limits) stay messages,
  keyed by listener and filter chain, so policy plugins edit messages, never packed bytes;
  :func:`finish_listener` (called by the composer, :mod:`meshcore.compose`, after the last plugin) packs them.
* The helpers shared by the per-type generators and the plugins: durations, addresses, the ADS config
  source, SDS-from-file secrets, mTLS contexts, and what lives on a proxy (its instances, its upstreams).

Guarantee: every nested ``Any`` in generated output is packed deterministically, with :func:`pack`, exactly
once. Nothing in generation or in a plugin unpacks an ``Any`` to patch and repack it: configs that plugins
edit stay messages until :func:`finish_listener`, and every other ``Any`` is packed when it is made and never
touched again. Serializing a finished resource with ``deterministic=True`` therefore yields its canonical
bytes in one pass (no re-serialization is needed to hash it).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Iterator

from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from ... import naming
from ..._addresses import is_ip
from ...authz.patterns import re_escape
from ...catalog.model import ServiceInstance, Upstream
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from .._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from .sidecar_ingress import declared_instances
from .sidecar_scope import scope_bindings

TYPE_PREFIX = "type.googleapis.com/"


def type_url(message_cls: type[Message]) -> str:
    """``type.googleapis.com/<full name>`` of a proto class (what an ``Any`` of it carries)."""
    return TYPE_PREFIX + message_cls.DESCRIPTOR.full_name


def pack(message: Message) -> any_pb2.Any:
    """``message`` as an ``Any``, serialized deterministically (maps sorted), so equal configs hash equal."""
    return any_pb2.Any(type_url=type_url(type(message)), value=message.SerializeToString(deterministic=True))


def is_type(packed: any_pb2.Any, message_cls: type[Message]) -> bool:
    """True when ``packed`` holds a ``message_cls``."""
    return packed.Is(message_cls.DESCRIPTOR)


@dataclass
class NetworkFilter:
    """One network filter of a filter chain; ``config`` is its ``typed_config``, still a message."""

    name: str
    config: Message


@dataclass
class ChainDraft:
    """A filter chain being built: ``message`` is everything but its filters, which stay in ``filters``."""

    message: listener_components_pb2.FilterChain = field(default_factory=listener_components_pb2.FilterChain)
    filters: list[NetworkFilter] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.message.name


@dataclass
class ListenerDraft:
    """A listener being built: ``message`` is everything but its filter chains, which stay drafts."""

    message: listener_pb2.Listener
    filter_chains: list[ChainDraft] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.message.name

    def http_managers(self) -> Iterator[tuple[ChainDraft, hcm_pb2.HttpConnectionManager]]:
        """``(chain, manager)`` for every HttpConnectionManager among the chains' filters, in order."""
        for chain in self.filter_chains:
            for f in chain.filters:
                if isinstance(f.config, hcm_pb2.HttpConnectionManager):
                    yield chain, f.config


def finish_listener(draft: ListenerDraft) -> listener_pb2.Listener:
    """The Listener message of ``draft``, each network filter's config packed (once) into its ``typed_config``.

    Consumes the draft: its ``message`` becomes the finished listener (no copy of the listener is made).
    """
    listener = draft.message
    if listener.filter_chains:
        raise ValueError(f"listener {listener.name!r}: draft already finished (or given filter chains directly)")
    for chain in draft.filter_chains:
        out = listener.filter_chains.add()
        out.CopyFrom(chain.message)
        for f in chain.filters:
            out.filters.add(name=f.name, typed_config=pack(f.config))
    return listener


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def file_sds(secret_name: str, proxy: ProxyInfo) -> secret_pb2.SdsSecretConfig:
    """A secret the VM agent writes on the VM (private keys never leave it); Envoy watches the directory."""
    path = posixpath.join(proxy.secrets_dir, naming.secret_file(secret_name))
    return secret_pb2.SdsSecretConfig(
        name=secret_name,
        sds_config=config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(
                path=path, watched_directory=base_pb2.WatchedDirectory(path=proxy.secrets_dir)
            ),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def uri_san(exact: str | None = None, prefix: str | None = None,
            regex: str | None = None) -> common_pb2.SubjectAltNameMatcher:
    """A URI SAN matcher: ``exact``, ``prefix`` or ``regex`` (RE2, matched against the whole SAN), one of them."""
    if [exact, prefix, regex].count(None) != 2:
        raise ValueError("uri_san: give exactly one of exact, prefix, regex")
    if exact is not None:
        matcher = string_pb2.StringMatcher(exact=exact)
    elif prefix is not None:
        matcher = string_pb2.StringMatcher(prefix=prefix)
    else:
        matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)


def workload_san_regex(trust_domain: str) -> str:
    """RE2 for a workload SVID of ``trust_domain`` and nothing else: ``spiffe://<td>/ns/<ns>/sa/<sa>``.

    The CA also issues node (``/meshcore/node/<node>``), control plane and operator identities under the same
    roots; none of them is a workload, so none may call a service (Envoy matches the whole SAN)."""
    return f"spiffe://{re_escape(trust_domain)}/ns/[^/]+/sa/[^/]+"


def common_tls(snapshot: MeshSnapshot, proxy: ProxyInfo, own_service: str,
               peer_sans: list[common_pb2.SubjectAltNameMatcher]) -> tls_pb2.CommonTlsContext:
    """Present ``own_service``'s SVID; accept peers chaining to the trust bundle whose URI SAN matches."""
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
        tls_certificate_sds_secret_configs=[file_sds(naming.svid_secret(own_service), proxy)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(match_typed_subject_alt_names=peer_sans),
            validation_context_sds_secret_config=file_sds(naming.trust_bundle_secret(snapshot.trust_domain), proxy),
        ),
    )


MESH_ALPN = ("h2", "http/1.1")
"""ALPN of every HTTP mTLS hop between mesh proxies, both ends: HTTP/2 when both offer it, else HTTP/1.1."""


def downstream_mtls(snapshot: MeshSnapshot, proxy: ProxyInfo, instance: ServiceInstance) -> tls_pb2.DownstreamTlsContext:
    # Any workload of the trust domain, or of a federated one, may connect; which ones may call what is
    # AuthorizationPolicy's job. Each federated peer is verified against its own domain's roots by the
    # SPIFFE validator the agent puts in the bundle secret (meshcore.federation.agent_side).
    # Only workload SVIDs: a node, control plane or operator certificate chains to the same roots but is refused
    # in the handshake, whatever the mTLS mode (PERMISSIVE adds a plaintext chain, never a looser TLS one).
    # An HTTP service offers HTTP/2 in ALPN to mesh peers (their clusters ask for it, see clusters.mesh_http_protocol_options), and
    # HTTP/1.1 to a client that offers only that; the connection manager's codec (AUTO) follows what was agreed.
    peers = [uri_san(regex=workload_san_regex(td)) for td in peer_trust_domains(snapshot)]
    common = common_tls(snapshot, proxy, instance.service, peers)
    if instance.protocol != "tcp":
        common.alpn_protocols.extend(MESH_ALPN)
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )


def peer_trust_domains(snapshot: MeshSnapshot) -> list[str]:
    """The mesh's own trust domain first, then every federated one (sorted, without duplicates)."""
    federated = sorted({td for td, _ in snapshot.settings.federated_bundles} - {snapshot.trust_domain})
    return [snapshot.trust_domain, *federated]


def transport_socket(name: str, config: Message) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=name, typed_config=pack(config))


def typed_extension(name: str, config: Message) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config))


# --- what lives on a proxy -----------------------------------------------------------------

def local_instances(snapshot: MeshSnapshot, proxy: ProxyInfo) -> tuple[ServiceInstance, ...]:
    """Instances whose Envoy is this proxy: everything registered on its node."""
    return snapshot.catalog.on_node(proxy.node)


def sidecar_instances(snapshot: MeshSnapshot, proxy: ProxyInfo) -> tuple[ServiceInstance, ...]:
    # each with the inbound protocol its Sidecar's ingress[] gives it (as its protocol meta; see sidecar_ingress)
    return declared_instances(snapshot, tuple(i for i in local_instances(snapshot, proxy) if i.kind == ""))


def outbound_bindings(snapshot: MeshSnapshot, proxy: ProxyInfo) -> tuple[tuple[ServiceInstance, Upstream], ...]:
    """Every (local instance, declared upstream) pair, one per bind address.

    Two local services may declare the same upstream on the same address and port (one
    listener serves both); two different upstreams on one address are a configuration error.
    """
    seen: dict[tuple[str, int], tuple[ServiceInstance, Upstream]] = {}
    problems = []
    for inst in local_instances(snapshot, proxy):
        for up in inst.upstreams:
            key = (up.local_bind_address, up.local_bind_port)
            if key in seen:
                other_inst, other_up = seen[key]
                if other_up.destination_name != up.destination_name or other_up.datacenter != up.datacenter:
                    problems.append(
                        f"upstreams {other_up.destination_name!r} (service {other_inst.id}) and "
                        f"{up.destination_name!r} (service {inst.id}) both bind {key[0]}:{key[1]}"
                    )
                continue
            seen[key] = (inst, up)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)
    return scope_bindings(snapshot, tuple(seen[k] for k in sorted(seen)))  # a Sidecar's egress hosts


def upstream_protocol(snapshot: MeshSnapshot, upstream: Upstream) -> str:
    protocols = snapshot.catalog.protocols_of(upstream.destination_name)
    return next(iter(protocols)) if len(protocols) == 1 else "http"


def upstream_spiffe_ids(snapshot: MeshSnapshot, upstream: Upstream) -> list[str]:
    """Identities the upstream may present: those of its registered instances (or its default one)."""
    td = snapshot.trust_domain
    ids = sorted({naming.workload_spiffe_id(td, ns, sa)
                  for ns, sa in snapshot.catalog.identities_of(upstream.destination_name)})
    return ids or [naming.workload_spiffe_id(snapshot.trust_domain, naming.DEFAULT_NAMESPACE, upstream.destination_name)]




__all__ = [
    "is_ip",
    "LISTENER", "ROUTE", "CLUSTER", "ENDPOINT", "SECRET", "TYPE_PREFIX", "type_url", "pack", "is_type",
    "NetworkFilter", "ChainDraft", "ListenerDraft", "finish_listener",
    "seconds", "socket_address", "ads_source", "file_sds", "uri_san", "workload_san_regex", "common_tls", "downstream_mtls", "MESH_ALPN",
    "peer_trust_domains", "transport_socket", "typed_extension", "local_instances", "sidecar_instances",
    "outbound_bindings", "upstream_protocol", "upstream_spiffe_ids",
]
