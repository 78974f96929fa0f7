"""The ADS gRPC server: streams each proxy its own node's snapshot, state of the world.

One stream = one Envoy. Per stream we track, per type URL, what the proxy asked for (resource names;
an empty list for LDS/CDS means "everything") and the nonce/version of the last response. Two event
sources feed one thread-safe queue that the response generator drains in order:

* a reader thread that pulls ``DiscoveryRequest`` s off the stream, and
* the cache, which calls back when this node's snapshot changes.

Flow control follows the xDS protocol: after a response of a type we wait for its ACK or NACK before
sending that type again; a stale nonce is ignored.

Cluster warming: an updated cluster (new circuit breakers, say) stays *warming* in Envoy until it gets
its endpoints, and Envoy keeps using the old one meanwhile, up to its 15 s initial-fetch timeout. The
endpoints may be unchanged, so nothing new would be sent. Two rules avoid that wait: a request that
repeats the last answered nonce while nothing is in flight is a re-subscription and is answered again
(named types only), and after the proxy ACKs a new cluster version its endpoints are offered again. A NACK is logged, counted and recorded in the
cache status; the proxy keeps its last good config and we send nothing more for that type until the
snapshot changes (no resend loop). Delta xDS (``DeltaAggregatedResources``) answers UNIMPLEMENTED.

Thread budget: grpcio's sync server holds one pool worker per open stream for the stream's whole
life, plus the stream's reader thread (not from the pool). Size ``max_workers`` for the fleet: one
per proxy, plus headroom. Streams beyond ``max_workers`` are refused with RESOURCE_EXHAUSTED (Envoy
retries with backoff) instead of queueing unanswered.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshcore.errors import XdsError
from meshcore.naming import parse_node_spiffe_id
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, PUSH_ORDER, SERVED_TYPES, WILDCARD_TYPES, short_name
from meshcore.xds.cache import ProxySnapshot, SnapshotCache

__all__ = ["AdsServicer", "Authorizer", "allow_any_node", "mtls_node_authorizer", "serve_ads"]

log = logging.getLogger(__name__)

#: ``authorize(context, node)`` returns to accept the stream. To refuse it aborts the context with its
#: own status, or raises any exception (answered as PERMISSION_DENIED with the exception's text).
Authorizer = Callable[[grpc.ServicerContext, base_pb2.Node], None]

DEFAULT_MAX_WORKERS = 256


def allow_any_node(context: grpc.ServicerContext, node: base_pb2.Node) -> None:
    """Authorizer that accepts every node: only for tests and loopback development setups."""


def mtls_node_authorizer(trust_domain: str) -> Authorizer:
    """Authorizer that lets a proxy ask only for the node its client certificate names.

    The peer's certificate must carry exactly one URI SAN ``spiffe://<trust_domain>/meshcore/node/<id>``
    and ``<id>`` must equal ``node.id``; otherwise the stream is aborted with PERMISSION_DENIED.
    """

    def authorize(context: grpc.ServicerContext, node: base_pb2.Node) -> None:
        uris = _peer_uri_sans(context)
        if not uris:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"no client certificate with a SPIFFE URI SAN was presented for node {node.id!r}; "
                "connect with the node's mTLS identity (spiffe://<trust-domain>/meshcore/node/<node>)",
            )
        if len(uris) != 1:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate has {len(uris)} URI SANs {uris}; a SPIFFE SVID has exactly one",
            )
        parsed = parse_node_spiffe_id(uris[0])
        if parsed is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client identity {uris[0]!r} is not a meshcore node identity "
                f"(spiffe://{trust_domain}/meshcore/node/<node>)",
            )
        peer_td, peer_node = parsed  # type: ignore[misc]
        if peer_td != trust_domain:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client identity {uris[0]!r} is in trust domain {peer_td!r}, expected {trust_domain!r}",
            )
        if peer_node != node.id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client identity {uris[0]!r} may only request config for node {peer_node!r}, "
                f"not {node.id!r}; check node.id in the proxy's bootstrap",
            )

    return authorize


def _peer_uri_sans(context: grpc.ServicerContext) -> list[str]:
    """URI SANs of the peer's leaf certificate, from grpcio's auth context.

    grpcio (1.85) exposes ``x509_pem_cert`` (the leaf, PEM), ``peer_uri`` (URI SANs),
    ``x509_subject_alternative_name`` (all SANs, DNS and URI mixed) and ``peer_spiffe_id`` (only when
    there is exactly one valid SPIFFE URI). We parse the PEM, the most direct source, and fall back to
    ``peer_uri``.
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if pems:
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            return list(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            return []
        except ValueError:
            pass
    return [v.decode(errors="replace") for v in auth.get("peer_uri") or []]


# --- metrics ----------------------------------------------------------------------------------

class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "meshcore_xds_connected_proxies", "Proxies with an open, authorized ADS stream.", registry=registry
        )
        self.pushes = Counter(
            "meshcore_xds_pushes", "xDS responses sent, by type (cds, eds, lds, rds, sds).", ["type"], registry=registry
        )
        self.acks = Counter("meshcore_xds_acks", "xDS responses ACKed by proxies, by type.", ["type"], registry=registry)
        self.nacks = Counter(
            "meshcore_xds_nacks", "xDS responses rejected (NACKed) by proxies, by type.", ["type"], registry=registry
        )


# --- per-stream state -------------------------------------------------------------------------

@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    nonce: str | None = None  # nonce of the response awaiting ACK/NACK (None: nothing in flight)
    last_nonce: str | None = None  # nonce of the most recent response of this type
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None  # None: sent as wildcard
    nacks_in_row: int = 0  # consecutive NACKs of this type; drives the resend backoff
    acked_version: str | None = None  # the last version the proxy ACKed

    @property
    def active(self) -> bool:
        return self.wildcard or bool(self.names)


_CHANGED = object()
_CLOSED = object()

# After a NACK the same version is offered again after a backoff (1 s, 2 s, 4 s ... 60 s): a NACK is
# often transient on a VM (a certificate file the agent is writing right now), and without a resend
# the proxy would wait for the next unrelated change of the mesh.
NACK_RESEND_BASE_S = 1.0
NACK_RESEND_MAX_S = 60.0


@dataclass(frozen=True)
class _Resend:
    type_url: str
    version: str


@dataclass
class _Stream:
    stream_id: str
    node_id: str | None = None
    types: dict[str, _TypeState] = field(default_factory=dict)
    nonces: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    events: "queue.Queue[object] | None" = None


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """State-of-the-world ADS over a :class:`SnapshotCache`; each stream sees only its node's snapshot."""

    def __init__(
        self,
        cache: SnapshotCache,
        authorize: Authorizer,
        registry: CollectorRegistry | None = None,
        on_ack: Callable[[str], None] | None = None,
    ) -> None:
        """``registry``: where the xDS metrics go (the control plane passes its own, so one ``/metrics``
        shows them); ``on_ack(node)`` runs after every ACK (e.g. to time convergence), and must be quick."""
        self.cache = cache
        self.authorize = authorize
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry)
        self._on_ack = on_ack

    # -- gRPC entry points --

    def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        events: queue.Queue[object] = queue.Queue()
        stream = _Stream(stream_id=uuid.uuid4().hex[:12], events=events)
        context.add_callback(lambda: events.put(_CLOSED))
        reader = threading.Thread(
            target=_read_requests,
            args=(request_iterator, events),
            name=f"ads-reader-{stream.stream_id}",
            daemon=True,
        )
        reader.start()
        cancel_watch: Callable[[], None] | None = None
        try:
            while True:
                event = events.get()
                if event is _CLOSED:
                    return
                if event is _CHANGED:
                    responses = self._on_change(stream)
                elif isinstance(event, _Resend):
                    responses = self._on_resend(stream, event)
                else:
                    assert isinstance(event, discovery_pb2.DiscoveryRequest)
                    if stream.node_id is None:
                        self._open(stream, event, context)
                        cancel_watch = self.cache.watch(stream.node_id, lambda: events.put(_CHANGED))  # type: ignore[arg-type]
                    responses = self._on_request(stream, event, context)
                for response in responses:
                    yield response
        finally:
            if cancel_watch is not None:
                cancel_watch()
            if stream.node_id is not None:
                self.cache.stream_closed(stream.node_id, stream.stream_id)
                self._metrics.connected.set(len(self.cache.connected_nodes()))
                log.info("ADS stream closed node=%s stream=%s", stream.node_id, stream.stream_id,
                         extra={"node": stream.node_id})

    def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802 - gRPC method name
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "meshcore serves state-of-the-world ADS only; remove 'api_type: DELTA_GRPC' from the bootstrap",
        )

    # -- stream life --

    def _open(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest, context: grpc.ServicerContext) -> None:
        node = request.node
        if not request.HasField("node") or not node.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first ADS request must carry node.id")
        try:
            self.authorize(context, node)
        except Exception as exc:
            if context.code() not in (None, grpc.StatusCode.OK):
                raise  # the authorizer aborted with its own status
            log.warning("ADS stream refused node=%s peer=%s reason=%s", node.id, context.peer(), exc,
                        extra={"node": node.id})
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node {node.id!r} refused: {exc}")
        stream.node_id = node.id
        self.cache.stream_opened(node.id, stream.stream_id)
        self._metrics.connected.set(len(self.cache.connected_nodes()))
        log.info("ADS stream opened node=%s stream=%s peer=%s", node.id, stream.stream_id, context.peer(),
                 extra={"node": node.id})

    def _on_request(
        self, stream: _Stream, request: discovery_pb2.DiscoveryRequest, context: grpc.ServicerContext
    ) -> list[discovery_pb2.DiscoveryResponse]:
        node_id = stream.node_id
        assert node_id is not None
        if request.HasField("node") and request.node.id and request.node.id != node_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node.id changed mid-stream from {node_id!r} to {request.node.id!r}; open a new stream",
            )
        type_url = request.type_url
        if not type_url:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an ADS request must set type_url")
        if type_url not in SERVED_TYPES:
            log.warning("ignoring request for unserved type node=%s type_url=%s", node_id, type_url,
                        extra={"node": node_id, "type_url": type_url})
            return []
        state = stream.types.setdefault(type_url, _TypeState())
        resubscribed = bool(request.response_nonce) and request.response_nonce == state.last_nonce \
            and state.nonce is None and not request.HasField("error_detail")
        clusters_changed = False
        if request.response_nonce:
            if request.response_nonce != state.last_nonce:
                log.debug("stale nonce node=%s type_url=%s nonce=%s", node_id, type_url, request.response_nonce)
                return []
            if state.nonce is not None:  # the reply to the response in flight
                state.nonce = None
                if request.HasField("error_detail"):
                    self._nack(stream, type_url, state, request)
                else:
                    state.nacks_in_row = 0
                    clusters_changed = type_url == CLUSTER and state.acked_version not in (None, request.version_info)
                    state.acked_version = request.version_info
                    self.cache.record_ack(node_id, stream.stream_id, type_url, request.version_info)
                    self._metrics.acks.labels(short_name(type_url)).inc()
                    log.debug("ACK node=%s type_url=%s version=%s", node_id, type_url, request.version_info)
                    if self._on_ack is not None:
                        try:
                            self._on_ack(node_id)
                        except Exception:  # noqa: BLE001 - a metrics hook must never break the stream
                            log.exception("on_ack hook failed node=%s", node_id)
            # else: a new subscription (e.g. more route names) on top of an already answered response
        names = frozenset(request.resource_names)
        state.wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        state.names = frozenset() if state.wildcard else names
        self.cache.record_subscription(node_id, stream.stream_id, type_url, state.active)
        if resubscribed and not state.wildcard:
            state.sent_version = None  # answer again: a new subscriber (a warming cluster) waits for it
        snapshot = self.cache.get(node_id)
        responses = [self._respond(stream, type_url, snapshot)]
        endpoints = stream.types.get(ENDPOINT)
        if clusters_changed and endpoints is not None and endpoints.nonce is None:
            endpoints.sent_version = None  # the updated clusters are warming: hand them their endpoints
            responses.append(self._respond(stream, ENDPOINT, snapshot))
        return [r for r in responses if r is not None]

    def _nack(self, stream: _Stream, type_url: str, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        node_id = stream.node_id
        rejected = state.sent_version or ""
        message = request.error_detail.message
        self.cache.record_nack(node_id, type_url, rejected, message)
        self._metrics.nacks.labels(short_name(type_url)).inc()
        delay = min(NACK_RESEND_MAX_S, NACK_RESEND_BASE_S * 2 ** state.nacks_in_row)
        state.nacks_in_row += 1
        log.warning(
            "xDS NACK node=%s type_url=%s version=%s accepted_version=%s error=%r; "
            "the proxy keeps its last good config; offering it again in %.0fs unless the mesh changes first",
            node_id, type_url, rejected, request.version_info, message, delay,
            extra={"node": node_id, "type_url": type_url, "version": rejected, "error": message},
        )
        if stream.events is not None:
            timer = threading.Timer(delay, stream.events.put, args=(_Resend(type_url, rejected),))
            timer.daemon = True
            timer.start()

    def _on_resend(self, stream: _Stream, event: _Resend) -> list[discovery_pb2.DiscoveryResponse]:
        """Offer a NACKed version again, unless something newer was sent meanwhile."""
        state = stream.types.get(event.type_url)
        if state is None or state.nonce is not None or state.sent_version != event.version:
            return []
        state.sent_version = None
        response = self._respond(stream, event.type_url, self.cache.get(stream.node_id))
        return [response] if response is not None else []

    def _on_change(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        assert stream.node_id is not None
        snapshot = self.cache.get(stream.node_id)
        responses = []
        for type_url in PUSH_ORDER:
            if type_url in stream.types:
                response = self._respond(stream, type_url, snapshot)
                if response is not None:
                    responses.append(response)
        return responses

    def _respond(
        self, stream: _Stream, type_url: str, snapshot: ProxySnapshot | None
    ) -> discovery_pb2.DiscoveryResponse | None:
        """The response this type needs now, or None (in flight, nothing new, nothing asked, no snapshot)."""
        state = stream.types[type_url]
        if snapshot is None or state.nonce is not None or not state.active:
            return None
        version = snapshot.versions[type_url]
        names = None if state.wildcard else state.names
        if state.sent_version == version and state.sent_names == names:
            return None  # the proxy has it already, or rejected it: wait for the next change
        nonce = f"{stream.stream_id}-{next(stream.nonces)}"
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=snapshot.packed(type_url, names),
        )
        state.nonce = state.last_nonce = nonce
        state.sent_version, state.sent_names = version, names
        node_id = stream.node_id
        assert node_id is not None
        self.cache.record_sent(node_id, type_url, version)
        self._metrics.pushes.labels(short_name(type_url)).inc()
        log.debug("push node=%s type_url=%s version=%s resources=%d nonce=%s",
                  node_id, type_url, version, len(response.resources), nonce)
        return response


def _read_requests(request_iterator: Iterator[discovery_pb2.DiscoveryRequest], events: queue.Queue[object]) -> None:
    """Move requests from the gRPC stream into the event queue; signal the end of the stream."""
    try:
        for request in request_iterator:
            events.put(request)
    except Exception:  # noqa: BLE001 - cancellation/disconnect surfaces as various grpc errors
        pass
    finally:
        events.put(_CLOSED)


def serve_ads(
    servicer: AdsServicer,
    bind: str,
    server_credentials: grpc.ServerCredentials | None,
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server with ``servicer`` on ``bind`` (``host:port``, port 0 = pick one).

    ``server_credentials`` None serves plaintext (loopback tests only); production passes
    ``grpc.ssl_server_credentials(..., require_client_auth=True)`` with :func:`mtls_node_authorizer`.
    Each open stream holds one of ``max_workers`` threads (see module docstring). Returns the started
    server and the bound port; stop it with ``server.stop(grace)``.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ads"),
        maximum_concurrent_rpcs=max_workers,
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    try:
        if server_credentials is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, server_credentials)
    except RuntimeError as exc:
        raise XdsError(f"cannot bind the ADS server to {bind!r}: {exc}; is the address free?") from exc
    if port == 0:
        raise XdsError(f"cannot bind the ADS server to {bind!r}; is the address free and the host local?")
    server.start()
    log.info("ADS server listening bind=%s port=%d tls=%s max_workers=%d",
             bind, port, server_credentials is not None, max_workers)
    return server, port
