"""Delta (incremental) ADS: responses carry only the resources that changed, and the names removed.

Envoy's "Incremental xDS" protocol, per type URL on one stream:

* the client subscribes and unsubscribes by name (``resource_names_subscribe``/``_unsubscribe``);
  the first request of LDS/CDS with no names is a wildcard subscription (as is ``*``);
* on reconnect it lists what it already holds in ``initial_resource_versions`` and gets only what
  differs (changed resources, and the names that no longer exist in ``removed_resources``);
* every resource carries its own version (the hash of its bytes, :class:`~meshcore.xds.cache.Prepared`),
  so an endpoint change sends only the changed ClusterLoadAssignment(s);
* a subscribed name that does not exist is answered in ``removed_resources`` (Envoy then knows at
  once instead of waiting for its initial-fetch timeout).

Flow control, ACK/NACK, the NACK resend backoff and the books are shared with state of the world
(:mod:`._stream`): one response per type in flight, a NACK rolls back what we believe the proxy
holds (it keeps its last good config) and the same resources are offered again after the backoff.

Cluster warming, the delta way: an updated EDS cluster warms in Envoy until it receives its
endpoints, and on a delta stream Envoy neither subscribes to them again (the name is already
subscribed) nor ACKs the clusters before they have warmed. So the (possibly unchanged)
ClusterLoadAssignment of every EDS cluster a CDS response carries, whose name the proxy already
subscribes to, is sent again right behind that CDS response, never after its ACK (which would wait
for Envoy's initial fetch timeout, 15 s). A subscription to a name the proxy already holds is
answered again too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse as Response

from meshcore.xds._stream import Protocol, Resend, TypeState, log
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, SERVED_TYPES, WILDCARD_TYPES
from meshcore.xds.cache import Prepared, ProxySnapshot


#: ``_DeltaState.inflight`` value for a name the proxy did not hold before the response in flight.
_UNKNOWN = "\0unknown"


@dataclass
class _DeltaState(TypeState):
    #: What the proxy holds, as far as we know: name -> resource version; None: told it does not exist.
    known: dict[str, str | None] = field(default_factory=dict)
    #: For the response in flight: the ``known`` value of each name it changed (restored on NACK).
    inflight: dict[str, str | None] = field(default_factory=dict)
    #: A type version the proxy NACKed: not offered again until the backoff ends or the snapshot changes.
    blocked: str | None = None
    #: Names to send again whatever the proxy holds (EDS: the endpoints of clusters it is warming).
    resend: set[str] = field(default_factory=set)
    #: The ``resend`` names the response in flight carries (owed again if it is NACKed).
    inflight_resend: set[str] = field(default_factory=set)


class DeltaProtocol(Protocol[_DeltaState]):
    """Decides what one delta stream sends; returns responses, never writes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: EDS names of clusters sent before EDS was subscribed on this stream (owed to its first request).
        self._warming: set[str] = set()

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[Response]:
        node_id = self.stream.node_id
        type_url = request.type_url
        if type_url not in SERVED_TYPES:
            log.warning("ignoring delta request for unserved type node=%s type_url=%s", node_id, type_url,
                        extra={"node": node_id, "type_url": type_url})
            return []
        first = type_url not in self.types
        state = self.types.setdefault(type_url, _DeltaState())
        initial = dict(request.initial_resource_versions)
        if first:
            state.known.update(initial)
            state.wildcard = type_url in WILDCARD_TYPES and not request.resource_names_subscribe
        if first and type_url == ENDPOINT:
            state.resend |= self._warming  # clusters sent before this type was subscribed on this stream
            self._warming = set()
        reply = state.reply(request.response_nonce)
        if reply == "reply":
            if request.HasField("error_detail"):
                state.known.update(state.inflight)
                for name, held in state.inflight.items():
                    if held == _UNKNOWN:
                        state.known.pop(name, None)
                state.inflight = {}
                state.resend |= state.inflight_resend
                state.inflight_resend = set()
                state.blocked = state.sent_version
                self.books.nacked(self.stream, type_url, state, state.acked_version or "",
                                  request.error_detail.message)
            else:
                state.inflight = {}
                state.inflight_resend = set()
                self.books.acked(self.stream, type_url, state, state.sent_version or "")
        elif reply == "stale":
            log.debug("stale nonce node=%s type_url=%s nonce=%s", node_id, type_url, request.response_nonce)
        # Subscription changes count whatever the nonce: they are increments, never repeated.
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
                continue
            state.names.add(name)
            if name not in initial:
                state.known.pop(name, None)  # (re)subscribed: send it (again); a warming cluster waits for it
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
                state.known = {n: v for n, v in state.known.items() if n in state.names}
                continue
            state.names.discard(name)
            if not state.wildcard:
                state.known.pop(name, None)
        if first or request.resource_names_subscribe or request.resource_names_unsubscribe:
            self.books.subscribed(self.stream, type_url, state)
        response = self._respond(type_url, self._snapshot())
        return self._with_endpoints([response] if response is not None else [])

    def on_change(self) -> list[Response]:
        return self._with_endpoints(super().on_change())

    def on_resend(self, event: Resend) -> list[Response]:
        return self._with_endpoints(super().on_resend(event))

    def _with_endpoints(self, responses: list[Response]) -> list[Response]:
        """``responses``, and behind them the endpoints that the clusters among them wait for."""
        endpoints = self.types.get(ENDPOINT)
        if endpoints is not None and endpoints.resend and endpoints.nonce is None:
            response = self._respond(ENDPOINT, self._snapshot())
            if response is not None:
                responses.append(response)
        return responses

    def _unblock(self, state: _DeltaState, version: str) -> bool:
        if state.blocked != version:
            return False
        state.blocked = None
        return True

    def _warms(self, sent: list[Prepared]) -> None:
        """The EDS clusters among ``sent`` (a CDS response) warm until they get their endpoints: owe them."""
        endpoints = self.types.get(ENDPOINT)
        names = {name for name in map(_eds_name, sent) if name is not None}
        if endpoints is None:
            self._warming |= names  # EDS is not subscribed yet on this stream: owed once it is
            return
        endpoints.resend |= {n for n in names if n in endpoints.names or endpoints.wildcard}

    def _respond(self, type_url: str, snapshot: ProxySnapshot | None) -> Response | None:
        """The response this type needs now, or None (in flight, nothing differs, nothing asked, no snapshot)."""
        state = self.types[type_url]
        if snapshot is None or state.nonce is not None or not state.active:
            return None
        version = snapshot.versions[type_url]
        if state.blocked == version:
            return None  # rejected: wait for the backoff or the next change
        state.blocked = None
        entries = snapshot.entries(type_url)
        wanted = set(state.names)
        if state.wildcard:
            wanted.update(entries)
        resend, state.resend = state.resend, set()
        send: list[Prepared] = []
        removed: list[str] = []
        for name in sorted(wanted):
            entry = entries.get(name)
            held = state.known.get(name, _UNKNOWN)
            if entry is not None:
                if held != entry.version or name in resend:
                    send.append(entry)
            elif held is not None:  # the proxy holds it, or was never told it does not exist
                removed.append(name)
        removed.extend(sorted(n for n, held in state.known.items() if n not in wanted and held is not None))
        if not send and not removed:
            if state.acked_version != version:  # nothing this stream holds changed: it runs this version
                state.sent_version = version
                self.books.acked(self.stream, type_url, state, version, counted=False)
            return None
        state.inflight = {name: state.known.get(name, _UNKNOWN) for name in [e.name for e in send] + removed}
        state.inflight_resend = {e.name for e in send if e.name in resend}
        for entry in send:
            state.known[entry.name] = entry.version
        for name in removed:
            if name in state.names:
                state.known[name] = None
            else:
                state.known.pop(name, None)
        nonce = self.stream.next_nonce()
        response = Response(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=[discovery_pb2.Resource(name=e.name, version=e.version, resource=e.any) for e in send],
            removed_resources=removed,
        )
        self.books.sent(self.stream, type_url, state, version, nonce, len(send))
        if type_url == CLUSTER:
            self._warms(send)
        return response


def _eds_name(entry: Prepared) -> str | None:
    """The EDS resource name of a cluster entry (None: not an EDS cluster); read once per entry."""
    def read() -> str | None:
        cluster = entry.message
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type != cluster_pb2.Cluster.EDS:
            return None
        return cluster.eds_cluster_config.service_name or cluster.name
    return entry.derived("eds_name", read)
