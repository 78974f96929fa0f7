"""The ADS gRPC server: streams each proxy its own node's snapshot, state of the world or delta.

One stream = one Envoy. The server runs on ``grpc.aio``: one event loop in a thread of its own serves
every stream (no thread per stream, no concurrency cap below the fleet); a small thread pool runs the
authorizer, which may block (the control plane registers the proxy with its engine there). What to
send is decided by the protocol modules (:mod:`._sotw` for ``StreamAggregatedResources``,
:mod:`._delta` for ``DeltaAggregatedResources``) over the subscription, ACK/NACK and bookkeeping
state they share (:mod:`._stream`).

Cache changes arrive on the publishing thread and enter the loop with ``call_soon_threadsafe``;
they are coalesced per stream, and a stream whose client stops reading blocks only in its own
``write``, so a slow or stuck proxy never delays the others.

A NACK is logged with Envoy's error, counted and recorded in the cache status; the proxy keeps its
last good config and the rejected version is offered again after a backoff (1 s, 2 s ... 60 s) unless
the snapshot changes first.

Who may open a stream: with ``node_trust_domain`` set (the control plane always sets it), only a peer
whose certificate carries exactly one URI SAN, a node identity ``spiffe://<td>/meshcore/node/<node>``
of that trust domain. Anything else (a workload SVID ``spiffe://td/ns/X/sa/Y``, an operator
certificate, no certificate) is answered PERMISSION_DENIED when the stream opens, before any request is
read and before it counts against any limit.

Limits (operator-facing, all with a RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED message that says why):
at most ``max_streams_per_identity`` open streams per client identity (the URI SAN of its mTLS
certificate, else its node id; default 8), optionally ``max_streams`` in all, and a first request
within ``first_request_timeout`` seconds. Identity and both bounds are checked when the stream opens,
before anything is done for it (no reader, no timer, no authorizer thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
from cryptography import x509
from prometheus_client import CollectorRegistry

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshcore.errors import XdsError
from meshcore.naming import parse_node_spiffe_id
from meshcore.xds._delta import DeltaProtocol
from meshcore.xds._sotw import SotwProtocol
from meshcore.xds._stream import MAX_QUEUED_REQUESTS, Abort, Books, Metrics, Stream, log
from meshcore.xds.cache import SnapshotCache

__all__ = ["DEFAULT_MAX_STREAM_AGE_S", "AdsServer", "AdsServicer", "Authorizer", "allow_any_node",
           "mtls_node_authorizer", "serve_ads", "server_options"]

#: ``authorize(context, node)`` returns to accept the stream. To refuse it aborts the context with its
#: own status, or raises any exception (answered as PERMISSION_DENIED with the exception's text).
#: It runs on a worker thread; ``context`` offers what a synchronous grpcio context would for this:
#: ``auth_context()`` (the peer's certificate), ``peer()``, ``invocation_metadata()`` and ``abort()``.
Authorizer = Callable[[grpc.ServicerContext, base_pb2.Node], None]

DEFAULT_MAX_STREAMS_PER_IDENTITY = 8
DEFAULT_FIRST_REQUEST_TIMEOUT_S = 30.0
#: Threads that run authorizers (which may block); streams themselves need no thread.
AUTHORIZER_THREADS = 4

# After a NACK the same version is offered again after a backoff (1 s, 2 s, 4 s ... 60 s): a NACK is
# often transient on a VM (a certificate file the agent is writing right now), and without a resend
# the proxy would wait for the next unrelated change of the mesh.
#: A refused client is logged once per this many seconds (every refusal is counted).
REFUSAL_LOG_INTERVAL_S = 60.0

#: Connections (and so the ADS streams on them) are closed after this age, with gRPC's own jitter of +-10%,
#: as Istio's MaxServerConnectionAge: Envoy reconnects (keeping its config) and its xDS cluster picks a
#: replica again, so load spreads back after a replica returns. 0 keeps connections open for ever.
DEFAULT_MAX_STREAM_AGE_S = 1800.0
#: After the GOAWAY at that age, streams still open get this long to finish before the connection closes.
MAX_STREAM_AGE_GRACE_S = 10.0

NACK_RESEND_BASE_S = 1.0
NACK_RESEND_MAX_S = 60.0


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


def _peer_uri_sans(context: Any) -> list[str]:
    """URI SANs of the peer's leaf certificate, from grpcio's auth context.

    grpcio (1.85) exposes ``x509_pem_cert`` (the leaf, PEM), ``peer_uri`` (URI SANs),
    ``x509_subject_alternative_name`` (all SANs, DNS and URI mixed) and ``peer_spiffe_id`` (only when
    there is exactly one valid SPIFFE URI). We parse the PEM, the most direct source, and fall back to
    ``peer_uri``.
    """
    return _uri_sans(context.auth_context() or {})


def _uri_sans(auth: Mapping[str, Sequence[bytes]]) -> list[str]:
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



class _AuthorizerContext:
    """What an :data:`Authorizer` sees: the peer's ``auth_context()`` and ``peer()``; ``abort`` raises.

    Authorizers are plain functions run on a worker thread, so they get this stand-in for the
    asynchronous servicer context (whose ``abort`` is a coroutine).
    """

    def __init__(self, auth: Mapping[str, Sequence[bytes]], peer: str, metadata: Any) -> None:
        self._auth = auth
        self._peer = peer
        self._metadata = metadata

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return self._metadata

    def code(self) -> None:
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Abort(code, details)


def _backoff(nacks_in_row: int) -> float:
    return float(min(NACK_RESEND_MAX_S, NACK_RESEND_BASE_S * 2 ** nacks_in_row))


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS (state of the world and delta) over a :class:`SnapshotCache`; each stream sees only its node."""

    def __init__(
        self,
        cache: SnapshotCache,
        authorize: Authorizer,
        registry: CollectorRegistry | None = None,
        on_ack: Callable[[str], None] | None = None,
        *,
        max_streams_per_identity: int = DEFAULT_MAX_STREAMS_PER_IDENTITY,
        max_streams: int | None = None,
        first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT_S,
        node_trust_domain: str | None = None,
    ) -> None:
        """``registry``: where the xDS metrics go (the control plane passes its own, so one ``/metrics``
        shows them); ``on_ack(node)`` runs after every ACK (e.g. to time convergence), on the server's
        event loop, and must be quick. See the module docstring for the limits."""
        self.cache = cache
        self.authorize = authorize
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_streams_per_identity = max_streams_per_identity
        self.max_streams = max_streams
        self.first_request_timeout = first_request_timeout
        self.node_trust_domain = node_trust_domain
        self._metrics = Metrics(self.registry)
        self._books = Books(cache, self._metrics, on_ack, _backoff)
        self._per_identity: dict[str, int] = {}
        self._open = 0
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self._live: set[Stream] = set()  # every open stream (end_node_streams looks for a node's)
        self._authorizers = futures.ThreadPoolExecutor(AUTHORIZER_THREADS, thread_name_prefix="ads-authorize")

    def end_node_streams(self, node: str, reason: str) -> None:
        """End every open stream of ``node`` with PERMISSION_DENIED and ``reason`` (its identity was
        revoked). Thread-safe: each stream ends on the event loop."""
        for stream in list(self._live):
            if stream.node_id == node:
                def end(s: Stream = stream) -> None:
                    s.ended_by = reason
                    s.wake.set()
                try:
                    stream.loop.call_soon_threadsafe(end)
                except RuntimeError:  # the loop is closed: the server is stopping
                    pass

    def close(self) -> None:
        """Release the authorizer threads (the server calls this when it stops)."""
        self._authorizers.shutdown(wait=False, cancel_futures=True)

    # -- gRPC entry points --

    async def StreamAggregatedResources(self, request_iterator: AsyncIterator[Any], context: Any) -> None:  # noqa: N802
        await self._serve("sotw", request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterator[Any], context: Any) -> None:  # noqa: N802
        await self._serve("delta", request_iterator, context)

    # -- one stream --

    async def _serve(self, protocol: str, request_iterator: AsyncIterator[Any], context: Any) -> None:
        stream = Stream(asyncio.get_running_loop(), uuid.uuid4().hex[:12], protocol)
        try:
            await self._run(stream, request_iterator, context)
        except Abort as exc:
            await context.abort(exc.code, exc.details)

    async def _run(self, stream: Stream, request_iterator: AsyncIterator[Any], context: Any) -> None:
        auth = context.auth_context() or {}
        peer = context.peer()
        uris = _uri_sans(auth)
        reader: asyncio.Future[None] | None = None
        cancel_watch: Callable[[], None] | None = None
        self._open += 1
        self._live.add(stream)
        self._metrics.streams.labels(stream.protocol).inc()
        try:
            if self.node_trust_domain is not None:  # who the peer is comes first: nothing is done for a stranger
                self._check_node_identity(uris, peer)
            if self.max_streams is not None and self._open > self.max_streams:
                self._refuse("max_streams", f"the ADS server holds {self._open - 1} streams, its limit "
                             f"(max_streams={self.max_streams}); retry later or add a control plane replica")
            if uris:  # an mTLS identity: bounded before it may even send a request
                self._admit(stream, uris[0])
            reader = asyncio.ensure_future(self._read(request_iterator, stream))
            stream.time_out_later(self.first_request_timeout)
            handler: SotwProtocol | DeltaProtocol | None = None
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.ended_by is not None:
                    raise Abort(grpc.StatusCode.PERMISSION_DENIED, stream.ended_by)
                while stream.requests:
                    request = stream.requests.popleft()
                    stream.room.set()
                    if handler is None:
                        await self._authorize(stream, request, auth, peer, context)
                        handler = (SotwProtocol if stream.protocol == "sotw" else DeltaProtocol)(
                            stream, self.cache, self._books)
                        cancel_watch = self.cache.watch(stream.node_id, stream.changed_threadsafe)  # type: ignore[arg-type]
                    self._check(stream, request)
                    await _write(context, handler.on_request(request))
                if stream.timed_out:
                    raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no ADS request within {self.first_request_timeout:.0f}s of opening the stream; "
                                "a proxy sends its node and first subscription at once")
                if handler is not None:
                    if stream.change_pending:
                        stream.change_pending = False
                        await _write(context, handler.on_change())
                    while stream.resends:
                        await _write(context, handler.on_resend(stream.resends.popleft()))
                if stream.closed and not stream.requests:
                    return
        finally:
            self._open -= 1
            self._live.discard(stream)
            self._metrics.streams.labels(stream.protocol).dec()
            if reader is not None:
                reader.cancel()
            stream.cancel_timers()
            if cancel_watch is not None:
                cancel_watch()
            if stream.identity is not None:
                left = self._per_identity.get(stream.identity, 1) - 1
                if left:
                    self._per_identity[stream.identity] = left
                else:
                    self._per_identity.pop(stream.identity, None)
            if stream.node_id is not None:
                self.cache.stream_closed(stream.node_id, stream.stream_id)
                self._metrics.connected.set(len(self.cache.connected_nodes()))
                log.info("ADS stream closed node=%s stream=%s protocol=%s", stream.node_id, stream.stream_id,
                         stream.protocol, extra={"node": stream.node_id})

    @staticmethod
    async def _read(request_iterator: AsyncIterator[Any], stream: Stream) -> None:
        """Move requests from the wire to the stream; wait while too many are queued."""
        try:
            async for request in request_iterator:
                stream.put_request(request)
                while len(stream.requests) >= MAX_QUEUED_REQUESTS:
                    stream.room.clear()
                    await stream.room.wait()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - cancellation/disconnect surfaces as various grpc errors
            pass
        finally:
            stream.end()

    def _refuse(self, reason: str, message: str, who: str = "") -> None:
        self._metrics.refused.labels(reason).inc()
        self._warn_refused(reason, who, f"ADS stream refused reason={reason}: {message}")
        raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _warn_refused(self, reason: str, who: str, message: str) -> None:
        """Log a refusal once per (reason, identity) per :data:`REFUSAL_LOG_INTERVAL_S`: a client retrying or
        opening hundreds of streams must not flood the log (the refused-streams counter counts every one)."""
        now = time.monotonic()
        key = (reason, who)
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            return
        if len(self._refusals_logged) > 1024:
            self._refusals_logged.clear()
        self._refusals_logged[key] = now
        log.warning("%s (further refusals of this client for %.0fs are only counted in "
                    "meshcore_xds_streams_refused_total)", message, REFUSAL_LOG_INTERVAL_S)

    def _check_node_identity(self, uris: list[str], peer: str) -> None:
        """PERMISSION_DENIED unless the peer's certificate names exactly one node of ``node_trust_domain``."""
        parsed = parse_node_spiffe_id(uris[0]) if len(uris) == 1 else None
        if parsed is not None and parsed[0] == self.node_trust_domain:
            return
        if not uris:
            why = "no client certificate with a SPIFFE URI SAN was presented"
        elif len(uris) > 1:
            why = f"the client certificate has {len(uris)} URI SANs; a SPIFFE SVID has exactly one"
        elif parsed is None:
            why = f"{uris[0]!r} is not a node identity (a workload or operator certificate cannot open ADS streams)"
        else:
            why = f"{uris[0]!r} is in trust domain {parsed[0]!r}"
        self._metrics.refused.labels("not_a_node").inc()
        self._warn_refused("not_a_node", uris[0] if uris else peer.rpartition(":")[0],
                           f"ADS stream refused reason=not_a_node peer={peer}: {why}")
        raise Abort(grpc.StatusCode.PERMISSION_DENIED,
                    f"{why}; ADS streams are only for node identities "
                    f"(spiffe://{self.node_trust_domain}/meshcore/node/<node>) that the agent gets at join")

    def _admit(self, stream: Stream, identity: str) -> None:
        held = self._per_identity.get(identity, 0)
        if held >= self.max_streams_per_identity:
            self._refuse("per_identity", f"{identity} already holds {held} open ADS streams, the most one identity "
                         f"may hold (max_streams_per_identity={self.max_streams_per_identity}); a proxy needs one, "
                         "so close the others or find what opens them", identity)
        self._per_identity[identity] = held + 1
        stream.identity = identity

    async def _authorize(self, stream: Stream, request: Any, auth: Mapping[str, Sequence[bytes]], peer: str,
                         context: Any) -> None:
        node = request.node
        if not request.HasField("node") or not node.id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first ADS request must carry node.id")
        view = _AuthorizerContext(auth, peer, context.invocation_metadata())
        try:
            await stream.loop.run_in_executor(self._authorizers, self.authorize, view, node)
        except Abort:
            raise
        except Exception as exc:
            log.warning("ADS stream refused node=%s peer=%s reason=%s", node.id, peer, exc, extra={"node": node.id})
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, f"node {node.id!r} refused: {exc}") from exc
        if stream.identity is None:  # no client certificate (plaintext, tests): bounded per node id
            self._admit(stream, f"node:{node.id}")
        stream.node_id = node.id
        self.cache.stream_opened(node.id, stream.stream_id, stream.protocol)
        self._metrics.connected.set(len(self.cache.connected_nodes()))
        log.info("ADS stream opened node=%s stream=%s peer=%s protocol=%s", node.id, stream.stream_id, peer,
                 stream.protocol, extra={"node": node.id})

    @staticmethod
    def _check(stream: Stream, request: Any) -> None:
        if request.HasField("node") and request.node.id and request.node.id != stream.node_id:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"node.id changed mid-stream from {stream.node_id!r} to {request.node.id!r}; open a new stream")
        if not request.type_url:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "an ADS request must set type_url")


async def _write(context: Any, responses: list[Any]) -> None:
    for response in responses:
        await context.write(response)


# --- the server ---------------------------------------------------------------------------------

_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC sets SO_REUSEPORT on Linux by default: a second server on a taken address would bind without error
    # and the kernel would share the proxies' connections between the two. One address, one control plane.
    ("grpc.so_reuseport", 0),
]


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    """The process's ADS event loop, started on first use in a daemon thread of its own.

    One loop for every ADS server of the process, never closed: grpc.aio's completion queue is
    shared by the process and may still deliver a finished server's last events, which must find
    their loop running.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="ads-loop", daemon=True).start()
            _loop = loop
        return _loop


class AdsServer:
    """A running ADS server: a ``grpc.aio`` server on the process's ADS event loop.

    ``stop(grace)`` may be called from any thread; it returns a :class:`threading.Event` set once
    the server has stopped (like grpcio's synchronous ``Server.stop``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, server: grpc.aio.Server, port: int,
                 servicer: AdsServicer) -> None:
        self.port = port
        self._loop = loop
        self._server = server
        self._servicer = servicer
        self._stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()

    def stop(self, grace: float | None) -> threading.Event:
        with self._lock:
            if self._stopping:
                return self._stopped
            self._stopping = True

        async def stop() -> None:
            try:
                await self._server.stop(grace)
            finally:
                self._servicer.close()
                self._stopped.set()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def server_options(max_stream_age: float = DEFAULT_MAX_STREAM_AGE_S) -> list[tuple[str, int]]:
    """The gRPC server options; ``max_stream_age`` seconds (0 = none) becomes gRPC's maximum connection age:
    gRPC sends GOAWAY after that age (jittered by +-10% per connection, so a fleet that connected together
    does not reconnect together), lets the open streams run :data:`MAX_STREAM_AGE_GRACE_S` more, then closes.
    Nothing of this runs in the stream loop."""
    if max_stream_age < 0:
        raise XdsError(f"max stream age {max_stream_age:g}s: use 0 for none, or a positive duration such as 30m")
    options = list(_OPTIONS)
    if max_stream_age > 0:
        options += [("grpc.max_connection_age_ms", max(1, int(max_stream_age * 1000))),
                    ("grpc.max_connection_age_grace_ms", int(MAX_STREAM_AGE_GRACE_S * 1000))]
    return options


def serve_ads(
    servicer: AdsServicer,
    bind: str,
    server_credentials: grpc.ServerCredentials | None,
    *,
    max_stream_age: float = DEFAULT_MAX_STREAM_AGE_S,
) -> tuple[AdsServer, int]:
    """Start the ADS server with ``servicer`` on ``bind`` (``host:port``, port 0 = pick one).

    ``server_credentials`` None serves plaintext (loopback tests only); production passes
    ``grpc.ssl_server_credentials(..., require_client_auth=True)`` with :func:`mtls_node_authorizer`.
    ``max_stream_age``: see :func:`server_options`.
    Returns the started server and the bound port; stop it with ``server.stop(grace)`` from any thread.
    """
    options = server_options(max_stream_age)

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=options)
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
        await server.start()
        return server, port

    loop = _event_loop()
    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    log.info("ADS server listening bind=%s port=%d tls=%s max_stream_age=%gs (asyncio; sotw and delta)",
             bind, port, server_credentials is not None, max_stream_age)
    return AdsServer(loop, server, port, servicer), port
