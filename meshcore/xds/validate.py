"""Check a built per-proxy snapshot before it reaches the cache, and publish it when it is sound.

:func:`validate_snapshot` is pure: it returns every problem it finds (wrong proto types, missing or
duplicate names, and dangling cross-references: a listener naming a route configuration that is not
there, a route or TCP proxy naming a missing cluster, an EDS cluster without endpoints, a TLS context
asking ADS for a secret the snapshot lacks). :func:`publish` refuses the whole snapshot when anything
is wrong, so the proxy keeps running its last good config and the operator sees why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, EncodeError, Message

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshcore.errors import SnapshotInvalid
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, MESSAGE_CLASS, ROUTE, SECRET, resource_name
from meshcore.xds.cache import Prepared, ProxySnapshot, SnapshotCache

__all__ = ["validate_snapshot", "publish"]

log = logging.getLogger(__name__)

_KIND = {LISTENER: "listener", ROUTE: "route configuration", CLUSTER: "cluster", ENDPOINT: "endpoints", SECRET: "secret"}
_HCM = hcm_pb2.HttpConnectionManager
_TCP_PROXY = tcp_proxy_pb2.TcpProxy
_DOWNSTREAM_TLS = tls_pb2.DownstreamTlsContext
_UPSTREAM_TLS = tls_pb2.UpstreamTlsContext


@dataclass
class _Refs:
    """Names referenced across types, each with where it was referenced (for the message)."""

    routes: list[tuple[str, str]] = field(default_factory=list)
    clusters: list[tuple[str, str]] = field(default_factory=list)
    endpoints: list[tuple[str, str]] = field(default_factory=list)
    secrets: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: "_FrozenRefs") -> None:
        routes, clusters, endpoints, secrets = other
        self.routes.extend(routes)
        self.clusters.extend(clusters)
        self.endpoints.extend(endpoints)
        self.secrets.extend(secrets)

    def freeze(self) -> "_FrozenRefs":
        return tuple(self.routes), tuple(self.clusters), tuple(self.endpoints), tuple(self.secrets)


_Ref = tuple[tuple[str, str], ...]
_FrozenRefs = tuple[_Ref, _Ref, _Ref, _Ref]
"""A :class:`_Refs` as plain tuples (routes, clusters, endpoints, secrets): what an analysis keeps."""


def validate_snapshot(node_id: str, resources_by_type: Mapping[str, Iterable[Message | Prepared]]) -> list[str]:
    """Every problem with ``resources_by_type`` as the snapshot of ``node_id``; empty when it is sound.

    Items are messages or :class:`Prepared` entries. What a check finds in one resource alone (required
    fields, the names it references) depends only on its content, so for an entry it is worked out once
    (:meth:`Prepared.derived`) however many snapshots hold the entry; only what spans resources (unique
    names, every reference resolved) is checked per snapshot.
    """
    problems: list[str] = []
    names: dict[str, set[str]] = {t: set() for t in MESSAGE_CLASS}
    typed: dict[str, list[_Analysis]] = {t: [] for t in MESSAGE_CLASS}

    for type_url, items in resources_by_type.items():
        expected = MESSAGE_CLASS.get(type_url)
        items = list(items)
        if expected is None:
            problems.append(f"unsupported type URL {type_url!r} ({len(items)} resource(s)); served: {sorted(MESSAGE_CLASS)}")
            continue
        kind = _KIND[type_url]
        for index, item in enumerate(items):
            cls = item.cls if isinstance(item, Prepared) else type(item)
            if not issubclass(cls, expected):
                problems.append(f"{kind} #{index}: is a {cls.__name__}, expected {expected.__name__} for {type_url}")
                continue
            analysis = _analysis_of(item)
            if analysis.uninitialized is not None:
                problems.append(f"{kind} #{index}: missing required fields {list(analysis.uninitialized)}")
            name = analysis.name
            if not name:
                field_name = "cluster_name" if type_url == ENDPOINT else "name"
                problems.append(f"{kind} #{index}: {field_name} is empty")
                continue
            if name in names[type_url]:
                problems.append(f"{kind} {name!r}: duplicate name (each {kind} name must be unique per proxy)")
                continue
            names[type_url].add(name)
            typed[type_url].append(analysis)

    refs = _Refs()
    for type_url in (LISTENER, ROUTE, CLUSTER):
        for analysis in typed[type_url]:
            problems.extend(analysis.problems)
            refs.extend(analysis.refs)

    for ref_list, type_url, what in (
        (refs.routes, ROUTE, "route configuration"),
        (refs.clusters, CLUSTER, "cluster"),
        (refs.endpoints, ENDPOINT, "ClusterLoadAssignment"),
        (refs.secrets, SECRET, "secret"),
    ):
        for name, where in ref_list:
            if name not in names[type_url]:
                problems.append(f"{where}: {what} {name!r} is not in the snapshot")
    return problems


class _Analysis(NamedTuple):
    """What validation finds in one resource on its own (a pure function of its content). Entries keep it
    as a plain tuple (:func:`_analysis_of`): the cyclic garbage collector stops tracking a tuple of strings
    and tuples, and a control plane keeps one analysis per resource of every connected proxy."""

    name: str
    uninitialized: tuple[str, ...] | None  # missing required fields, None when initialized
    problems: tuple[str, ...]  # undecodable nested configs
    refs: _FrozenRefs


def _analyse(message: Message) -> _Analysis:
    refs, problems = _Refs(), list[str]()
    if isinstance(message, listener_pb2.Listener):
        _listener_refs(message, refs, problems)
    elif isinstance(message, route_pb2.RouteConfiguration):
        _route_config_refs(message, f"route configuration {resource_name(message)!r}", refs)
    elif isinstance(message, cluster_pb2.Cluster):
        _cluster_refs(message, refs, problems)
    uninitialized = None if message.IsInitialized() else tuple(message.FindInitializationErrors())
    return _Analysis(resource_name(message), uninitialized, tuple(problems), refs.freeze())


def _analysis_of(item: Message | Prepared, message: Message | None = None) -> _Analysis:
    """``item``'s analysis; for an entry, memoized on it as a plain tuple (``message``: its message, when at hand)."""
    if not isinstance(item, Prepared):
        return _analyse(item)
    kept = item.derived("validate", lambda: tuple(_analyse(message if message is not None else item.message)))
    return _Analysis._make(kept)


# --- listeners --------------------------------------------------------------------------------

def _listener_refs(listener: listener_pb2.Listener, refs: _Refs, problems: list[str]) -> None:
    where = f"listener {listener.name!r}"
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    for chain_path, chain in chains:
        _filter_chain_refs(chain, f"{where}: {chain_path}", refs, problems)


def _filter_chain_refs(
    chain: listener_components_pb2.FilterChain, where: str, refs: _Refs, problems: list[str]
) -> None:
    if chain.HasField("transport_socket") and chain.transport_socket.HasField("typed_config"):
        tls = _unpack(chain.transport_socket.typed_config, _DOWNSTREAM_TLS, f"{where}.transport_socket", problems)
        if tls is not None:
            _tls_refs(tls.common_tls_context, f"{where}.transport_socket", refs)
    for index, network_filter in enumerate(chain.filters):
        path = f"{where}.filters[{index}]"
        if not network_filter.HasField("typed_config"):
            continue
        hcm = _unpack(network_filter.typed_config, _HCM, path, problems)
        if hcm is not None:
            _hcm_refs(hcm, f"{path} (http_connection_manager)", refs)
            continue
        tcp = _unpack(network_filter.typed_config, _TCP_PROXY, path, problems)
        if tcp is not None:
            if tcp.cluster:
                refs.clusters.append((tcp.cluster, f"{path} (tcp_proxy).cluster"))
            for i, weighted in enumerate(tcp.weighted_clusters.clusters):
                refs.clusters.append((weighted.name, f"{path} (tcp_proxy).weighted_clusters.clusters[{i}].name"))


def _hcm_refs(hcm: hcm_pb2.HttpConnectionManager, where: str, refs: _Refs) -> None:
    if hcm.HasField("rds"):
        if _via_ads(hcm.rds.config_source, unset_means_ads=True):
            refs.routes.append((hcm.rds.route_config_name, f"{where}.rds.route_config_name"))
    elif hcm.HasField("route_config"):
        _route_config_refs(hcm.route_config, f"{where}.route_config", refs)


# --- routes -----------------------------------------------------------------------------------

def _route_config_refs(route_config: route_pb2.RouteConfiguration, where: str, refs: _Refs) -> None:
    for v, vhost in enumerate(route_config.virtual_hosts):
        for r, route in enumerate(vhost.routes):
            if route.HasField("route"):
                _route_action_refs(route.route, f"{where}: virtual_hosts[{v}].routes[{r}].route", refs)


def _route_action_refs(action: route_components_pb2.RouteAction, where: str, refs: _Refs) -> None:
    if action.cluster:
        refs.clusters.append((action.cluster, f"{where}.cluster"))
    for i, weighted in enumerate(action.weighted_clusters.clusters):
        if weighted.name:
            refs.clusters.append((weighted.name, f"{where}.weighted_clusters.clusters[{i}].name"))
    for i, mirror in enumerate(action.request_mirror_policies):
        if mirror.cluster:
            refs.clusters.append((mirror.cluster, f"{where}.request_mirror_policies[{i}].cluster"))


# --- clusters ---------------------------------------------------------------------------------

def _cluster_refs(cluster: cluster_pb2.Cluster, refs: _Refs, problems: list[str]) -> None:
    where = f"cluster {cluster.name!r}"
    if cluster.WhichOneof("cluster_discovery_type") == "cluster_type" and \
            cluster.cluster_type.name == "envoy.clusters.aggregate":
        children = aggregate_pb2.ClusterConfig()
        if cluster.cluster_type.typed_config.Unpack(children):
            refs.clusters.extend((child, f"{where}: cluster_type.clusters") for child in children.clusters)
        else:
            problems.append(f"{where}: cluster_type.typed_config is not an aggregate ClusterConfig")
    if cluster.WhichOneof("cluster_discovery_type") == "type" and cluster.type == cluster_pb2.Cluster.EDS:
        eds = cluster.eds_cluster_config
        if not eds.HasField("eds_config") or _via_ads(eds.eds_config, unset_means_ads=True):
            refs.endpoints.append((eds.service_name or cluster.name, f"{where} (type EDS)"))
    sockets = []
    if cluster.HasField("transport_socket"):
        sockets.append(("transport_socket", cluster.transport_socket))
    for i, match in enumerate(cluster.transport_socket_matches):
        sockets.append((f"transport_socket_matches[{i}].transport_socket", match.transport_socket))
    for path, socket in sockets:
        if socket.HasField("typed_config"):
            tls = _unpack(socket.typed_config, _UPSTREAM_TLS, f"{where}: {path}", problems)
            if tls is not None:
                _tls_refs(tls.common_tls_context, f"{where}: {path}", refs)


# --- TLS / SDS --------------------------------------------------------------------------------

def _tls_refs(common: tls_pb2.CommonTlsContext, where: str, refs: _Refs) -> None:
    configs = [
        (f"common_tls_context.tls_certificate_sds_secret_configs[{i}]", c)
        for i, c in enumerate(common.tls_certificate_sds_secret_configs)
    ]
    if common.HasField("validation_context_sds_secret_config"):
        configs.append(("common_tls_context.validation_context_sds_secret_config",
                        common.validation_context_sds_secret_config))
    if common.HasField("combined_validation_context"):
        combined = common.combined_validation_context
        if combined.HasField("validation_context_sds_secret_config"):
            configs.append(("common_tls_context.combined_validation_context.validation_context_sds_secret_config",
                            combined.validation_context_sds_secret_config))
    for path, sds in configs:
        # Only secrets served over ADS must be in the snapshot; file-based SDS is the agent's business.
        if sds.HasField("sds_config") and sds.sds_config.HasField("ads"):
            refs.secrets.append((sds.name, f"{where}.{path}"))


def _via_ads(source: config_source_pb2.ConfigSource, unset_means_ads: bool) -> bool:
    which = source.WhichOneof("config_source_specifier")
    return which == "ads" or (which is None and unset_means_ads)


def _unpack(packed: any_pb2.Any, cls: type[Message], where: str, problems: list[str]) -> Message | None:
    """``packed`` as ``cls`` when it holds one; None otherwise (a problem is added if it is corrupt)."""
    if packed.type_url.rsplit("/", 1)[-1] != cls.DESCRIPTOR.full_name:
        return None
    message = cls()
    try:
        message.ParseFromString(packed.value)
    except DecodeError as exc:
        problems.append(f"{where}.typed_config: cannot decode {cls.__name__}: {exc}")
        return None
    return message


# --- publishing -------------------------------------------------------------------------------

def _changed_only(previous: ProxySnapshot, resources_by_type: Mapping[str, list[Message | Prepared]]) -> list[str] | None:
    """``[]`` when ``resources_by_type`` is sound, checking only its entries that are not ``previous``'s (a snapshot
    :func:`publish` validated); None when that does not suffice (or finds a problem): validate the whole snapshot.

    Sound when every type holds the same names as in ``previous`` and each entry is either ``previous``'s own
    (identical object: what it is and references was checked then, against the same names) or is checked here
    alone, with its references resolved against those names."""
    names: dict[str, Mapping[str, Prepared]] = {}
    changed: list[tuple[str, Prepared]] = []
    for type_url, items in resources_by_type.items():
        before = previous.entries(type_url)
        if type_url not in MESSAGE_CLASS or len(items) != len(before):
            return None
        names[type_url] = before
        seen = set()
        for item in items:
            if not isinstance(item, Prepared) or item.name not in before:
                return None
            seen.add(item.name)
            if before[item.name] is not item:
                changed.append((type_url, item))
        if len(seen) != len(items):
            return None  # a name twice (so another missing)
    for type_url in MESSAGE_CLASS:
        if type_url not in names and previous.entries(type_url):
            return None
    problems: list[str] = []
    refs = _Refs()
    for type_url, entry in changed:
        kind = _KIND[type_url]
        if not issubclass(entry.cls, MESSAGE_CLASS[type_url]):
            return None
        analysis = _analysis_of(entry)
        if analysis.uninitialized is not None:
            problems.append(f"{kind} {entry.name!r}: missing required fields {list(analysis.uninitialized)}")
        if type_url in (LISTENER, ROUTE, CLUSTER):
            problems.extend(analysis.problems)
            refs.extend(analysis.refs)
    empty: Mapping[str, Prepared] = {}
    for ref_list, type_url, what in (
        (refs.routes, ROUTE, "route configuration"),
        (refs.clusters, CLUSTER, "cluster"),
        (refs.endpoints, ENDPOINT, "ClusterLoadAssignment"),
        (refs.secrets, SECRET, "secret"),
    ):
        held = names.get(type_url, empty)
        for name, where in ref_list:
            if name not in held:
                problems.append(f"{where}: {what} {name!r} is not in the snapshot")
    return None if problems else []  # a rejection is worded by the full check


_VALIDATED = "_validated_by_publish"


def _mark_validated(snapshot: ProxySnapshot) -> None:
    object.__setattr__(snapshot, _VALIDATED, True)


def publish(
    cache: SnapshotCache, node_id: str, resources_by_type: Mapping[str, Iterable[Message | Prepared]]
) -> ProxySnapshot:
    """Validate, then store the snapshot for ``node_id``; raise :class:`SnapshotInvalid` (cache untouched).

    Resources may be messages or :class:`Prepared` entries shared with other proxies (used as they
    are). Each message is serialized once here; one whose bytes equal the entry of the same name in the
    node's cached snapshot is replaced by that entry (already analysed, not hashed again, and the snapshot
    keeps one copy of its bytes). When the cached snapshot is one this function validated and the new one
    holds the same names, only the entries that differ from it are checked (:func:`_changed_only`; the
    result is what :func:`validate_snapshot` finds). Returns the snapshot (whose version may equal the one
    already cached; then nothing is pushed).
    """
    previous = cache.get(node_id)
    prepared: dict[str, list[Message | Prepared]] = {}
    for type_url, items in resources_by_type.items():
        before = previous.entries(type_url) if previous is not None else {}
        out: list[Message | Prepared] = []
        for item in items:
            if isinstance(item, Message):
                try:
                    body = item.SerializeToString(deterministic=True)
                except EncodeError:
                    out.append(item)  # validation says what is missing
                    continue
                old = before.get(resource_name(item))
                if old is not None and old.body == body and old.cls is type(item):
                    item = old
                else:
                    entry = Prepared.of(item, body)
                    _analysis_of(entry, item)
                    item = entry
            out.append(item)
        prepared[type_url] = out
    problems = None
    if previous is not None and previous.__dict__.get(_VALIDATED):
        problems = _changed_only(previous, prepared)
    if problems is None:
        problems = validate_snapshot(node_id, prepared)
    if problems:
        log.error("snapshot rejected node=%s problems=%d: %s", node_id, len(problems), "; ".join(problems),
                  extra={"node": node_id})
        raise SnapshotInvalid(node_id, problems)
    snapshot = ProxySnapshot.of(prepared)
    _mark_validated(snapshot)
    if cache.set(node_id, snapshot):
        log.info("snapshot published node=%s version=%s", node_id, snapshot.version,
                 extra={"node": node_id, "version": snapshot.version})
    elif previous is not None and previous.version == snapshot.version:
        _mark_validated(previous)  # the same content: as sound as the snapshot just validated
    return snapshot
