"""What state-of-the-world and delta ADS streams share: the stream's event loop side, per-type
subscription and ACK/NACK state, and the books (cache status, metrics, hooks).

Like go-control-plane's ``stream/`` package beside ``sotw/`` and ``delta/``: the protocol modules
(:mod:`._sotw`, :mod:`._delta`) decide what to send; everything here is the same for both.

A :class:`Stream` lives on the server's event loop. Three things wake it: a request read off the
wire, a change of its node's snapshot (coalesced: however many changes arrive while the stream is
busy, it looks at the newest snapshot once), and a NACK resend timer. Changes arrive on the publishing
thread; the streams of one loop are woken through one :class:`_Waker`, which enters the loop once per
burst (one ``call_soon_threadsafe``, one self-pipe write, however many streams a rebuild published to). A stream whose client stops
reading blocks only in its own ``write``; the others keep going.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshcore.errors import StreamAborted as Abort  # noqa: F401 - the server raises and answers it
from meshcore.xds._typeurls import PUSH_ORDER, short_name
from meshcore.xds.cache import ProxySnapshot, SnapshotCache

log = logging.getLogger("meshcore.xds.server")

#: Requests read ahead of the stream's handler before the reader waits (back pressure on the client).
MAX_QUEUED_REQUESTS = 64


@dataclass(frozen=True)
class Resend:
    type_url: str
    version: str


@dataclass
class TypeState:
    """Subscription and flow-control state of one type on one stream (both protocols)."""

    names: set[str] = field(default_factory=set)  # explicitly subscribed resource names
    wildcard: bool = False
    nonce: str | None = None  # nonce of the response awaiting ACK/NACK (None: nothing in flight)
    last_nonce: str | None = None  # nonce of the most recent response of this type
    sent_version: str | None = None  # type version of the last response
    acked_version: str | None = None  # the last type version the proxy ACKed
    nacks_in_row: int = 0  # consecutive NACKs of this type; drives the resend backoff

    @property
    def active(self) -> bool:
        return self.wildcard or bool(self.names)

    def reply(self, nonce: str) -> str:
        """Classify a request's ``response_nonce``: ``none`` (no nonce), ``stale`` (not our latest
        response), ``answered`` (the latest response, already ACKed/NACKed), or ``reply`` (the ACK or
        NACK of the response in flight, which is then no longer in flight)."""
        if not nonce:
            return "none"
        if nonce != self.last_nonce:
            return "stale"
        if self.nonce is None:
            return "answered"
        self.nonce = None
        return "reply"


#: After a batch of wake-ups, the waker looks again this much later, on the loop's own timer: a rebuild
#: publishing to many proxies one after another then costs one loop entry per this interval, not one
#: self-pipe write (and GIL hand-over to the loop) per proxy. It ends at the first look that finds nothing.
LINGER_S = 0.005


class _Waker:
    """Wakes the streams of one event loop from other threads, entering the loop once per burst.

    A rebuild publishes to many proxies one after another; one ``call_soon_threadsafe`` per proxy cost a
    self-pipe write and a loop callback each (10% of the control plane's samples during a mesh-wide
    change at 200 proxies). Here the first stream woken schedules one callback; the streams woken before
    it runs join its batch, and it wakes them all (each at most once; waking is idempotent). After a batch
    the waker lingers: it looks again :data:`LINGER_S` later on the loop's timer, and streams woken meanwhile
    join that batch without entering the loop themselves (a publishing pass drains faster than it publishes,
    so without this each proxy was its own batch: 5% of the samples were that self-pipe write); the first
    look that finds nothing ends it, and the next wake-up enters the loop again."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker]" = weakref.WeakKeyDictionary()
    _by_loop_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._due: dict[int, Stream] = {}  # streams to wake, by id (insertion order: publish order)
        self._scheduled = False  # a callback (or a linger look) is due on the loop: wake-ups just join it

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_Waker":
        with cls._by_loop_lock:
            waker = cls._by_loop.get(loop)
            if waker is None:
                waker = cls._by_loop[loop] = cls(loop)
            return waker

    def wake(self, stream: "Stream") -> None:
        """Called on any thread: ``stream.changed()`` runs on the loop soon."""
        with self._lock:
            scheduled, self._scheduled = self._scheduled, True
            self._due[id(stream)] = stream
        if scheduled:
            return
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: the server is stopping
            with self._lock:
                self._due.clear()
                self._scheduled = False

    def _run(self) -> None:
        with self._lock:
            due, self._due = self._due, {}
            if not due:
                self._scheduled = False  # quiet: the next wake-up enters the loop itself
                return
        for stream in due.values():
            stream.changed()
        self._loop.call_later(LINGER_S, self._run)


class Stream:
    """One ADS stream's loop-side state: its wake-ups, nonces, timers and per-type state."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream_id: str, protocol: str) -> None:
        self.loop = loop
        self.stream_id = stream_id
        self.protocol = protocol
        self.node_id: str | None = None
        self.identity: str | None = None
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.requests: deque[Any] = deque()
        self.change_pending = False
        self.resends: deque[Resend] = deque()
        self.closed = False
        self.timed_out = False
        self.ended_by: str | None = None  # why the server ends it (node revoked): set by end_node_streams
        self._nonces = itertools.count(1)
        self._timers: set[asyncio.TimerHandle] = set()
        self._waker = _Waker.of(loop)

    def next_nonce(self) -> str:
        return f"{self.stream_id}-{next(self._nonces)}"

    # -- wake-ups (all on the loop) --

    def changed(self) -> None:
        self.change_pending = True
        self.wake.set()

    def changed_threadsafe(self) -> None:
        """The cache's watch callback: runs on the publishing thread; the loop's waker enters the loop."""
        self._waker.wake(self)

    def put_request(self, request: Any) -> None:
        self.requests.append(request)
        self.wake.set()

    def end(self) -> None:
        self.closed = True
        self.wake.set()

    def resend_later(self, delay: float, type_url: str, version: str) -> None:
        self._later(delay, lambda: self.resends.append(Resend(type_url, version)))

    def time_out_later(self, delay: float) -> None:
        def fire() -> None:
            if self.node_id is None:
                self.timed_out = True

        self._later(delay, fire)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            action()
            self.wake.set()

        handle = self.loop.call_later(delay, fire)
        self._timers.add(handle)

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "meshcore_xds_connected_proxies", "Proxies with an open, authorized ADS stream.", registry=registry
        )
        self.streams = Gauge(
            "meshcore_xds_streams", "Open ADS streams, by protocol (sotw, delta).", ["protocol"], registry=registry
        )
        self.pushes = Counter(
            "meshcore_xds_pushes", "xDS responses sent, by type (cds, eds, lds, rds, sds).", ["type"], registry=registry
        )
        self.acks = Counter("meshcore_xds_acks", "xDS responses ACKed by proxies, by type.", ["type"], registry=registry)
        self.nacks = Counter(
            "meshcore_xds_nacks", "xDS responses rejected (NACKed) by proxies, by type.", ["type"], registry=registry
        )
        self.refused = Counter(
            "meshcore_xds_streams_refused", "ADS streams refused, by reason.", ["reason"], registry=registry
        )


class Books:
    """The delivery bookkeeping both protocols do the same way: cache status, metrics, hooks, logs."""

    def __init__(self, cache: SnapshotCache, metrics: Metrics, on_ack: Callable[[str], None] | None,
                 backoff: Callable[[int], float]) -> None:
        """``backoff(n)``: seconds before a version NACKed ``n`` times in a row is offered again."""
        self.cache = cache
        self.backoff = backoff
        self.metrics = metrics
        self.on_ack = on_ack

    def subscribed(self, stream: Stream, type_url: str, state: TypeState) -> None:
        assert stream.node_id is not None
        self.cache.record_subscription(stream.node_id, stream.stream_id, type_url, state.active)

    def sent(self, stream: Stream, type_url: str, state: TypeState, version: str, nonce: str, count: int) -> None:
        node_id = stream.node_id
        assert node_id is not None
        state.nonce = state.last_nonce = nonce
        state.sent_version = version
        self.cache.record_sent(node_id, type_url, version)
        self.metrics.pushes.labels(short_name(type_url)).inc()
        log.debug("push node=%s type_url=%s version=%s resources=%d nonce=%s protocol=%s",
                  node_id, type_url, version, count, nonce, stream.protocol)

    def acked(self, stream: Stream, type_url: str, state: TypeState, version: str, *, counted: bool = True) -> None:
        """Record that the proxy runs ``version`` of ``type_url``; ``counted`` False when no response was
        needed for it (delta: the new version changed nothing this stream subscribes to)."""
        node_id = stream.node_id
        assert node_id is not None
        state.nacks_in_row = 0
        state.acked_version = version
        self.cache.record_ack(node_id, stream.stream_id, type_url, version)
        if counted:
            self.metrics.acks.labels(short_name(type_url)).inc()
            log.debug("ACK node=%s type_url=%s version=%s", node_id, type_url, version)
        if self.on_ack is not None:
            try:
                self.on_ack(node_id)
            except Exception:  # noqa: BLE001 - a metrics hook must never break the stream
                log.exception("on_ack hook failed node=%s", node_id)

    def nacked(self, stream: Stream, type_url: str, state: TypeState, accepted: str, message: str) -> None:
        """Log, count and record a NACK of the response in flight; offer it again after a backoff."""
        node_id = stream.node_id
        assert node_id is not None
        rejected = state.sent_version or ""
        self.cache.record_nack(node_id, type_url, rejected, message)
        self.metrics.nacks.labels(short_name(type_url)).inc()
        delay = self.backoff(state.nacks_in_row)
        state.nacks_in_row += 1
        log.warning(
            "xDS NACK node=%s type_url=%s version=%s accepted_version=%s error=%r; "
            "the proxy keeps its last good config; offering it again in %.0fs unless the mesh changes first",
            node_id, type_url, rejected, accepted, message, delay,
            extra={"node": node_id, "type_url": type_url, "version": rejected, "error": message},
        )
        stream.resend_later(delay, type_url, rejected)


S = TypeVar("S", bound=TypeState)


class Protocol(Generic[S]):
    """What both protocols do alike: per-type state, pushes on a change, NACK resends.

    Subclasses decide what one type needs now (``_respond``) and whether a resend timer still
    applies (``_unblock``); they return responses and never write them.
    """

    def __init__(self, stream: Stream, cache: SnapshotCache, books: Books) -> None:
        self.stream = stream
        self.cache = cache
        self.books = books
        self.types: dict[str, S] = {}

    def on_request(self, request: Any) -> list[Any]:
        raise NotImplementedError

    def on_change(self) -> list[Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        responses = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None or state.sent_version == snapshot.versions[type_url]:
                continue  # this type did not change since it was last worked out (requests redo it themselves)
            response = self._respond(type_url, snapshot)
            if response is not None:
                responses.append(response)
        return responses

    def on_resend(self, event: Resend) -> list[Any]:
        """Offer a NACKed version again, unless something newer was sent meanwhile."""
        state = self.types.get(event.type_url)
        if state is None or state.nonce is not None or not self._unblock(state, event.version):
            return []
        response = self._respond(event.type_url, self._snapshot())
        return [response] if response is not None else []

    def _snapshot(self) -> ProxySnapshot | None:
        assert self.stream.node_id is not None
        return self.cache.get(self.stream.node_id)

    def _unblock(self, state: S, version: str) -> bool:
        raise NotImplementedError

    def _respond(self, type_url: str, snapshot: ProxySnapshot | None) -> Any:
        raise NotImplementedError
