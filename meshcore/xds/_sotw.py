"""State-of-the-world ADS: each response carries every resource of its type the proxy asked for.

Per type URL we track what the proxy asked for (resource names; an empty list for LDS/CDS means
"everything") and the nonce/version of the last response. After a response of a type we wait for its
ACK or NACK before sending that type again; a stale nonce is ignored.

Cluster warming: an updated cluster (new circuit breakers, say) stays *warming* in Envoy until it gets
its endpoints, and Envoy keeps using the old one meanwhile, up to its 15 s initial-fetch timeout. The
endpoints may be unchanged, so nothing new would be sent. Two rules avoid that wait: a request that
repeats the last answered nonce while nothing is in flight is a re-subscription and is answered again
(named types only), and after the proxy ACKs a new cluster version its endpoints are offered again.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse as Response

from meshcore.xds._stream import Protocol, TypeState, log
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, SERVED_TYPES, WILDCARD_TYPES
from meshcore.xds.cache import ProxySnapshot



@dataclass
class _SotwState(TypeState):
    sent_names: frozenset[str] | None = None  # names of the last response; None: sent as wildcard


class SotwProtocol(Protocol[_SotwState]):
    """Decides what one state-of-the-world stream sends; returns responses, never writes them."""

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[Response]:
        node_id = self.stream.node_id
        type_url = request.type_url
        if type_url not in SERVED_TYPES:
            log.warning("ignoring request for unserved type node=%s type_url=%s", node_id, type_url,
                        extra={"node": node_id, "type_url": type_url})
            return []
        state = self.types.setdefault(type_url, _SotwState())
        has_error = request.HasField("error_detail")
        reply = state.reply(request.response_nonce)
        if reply == "stale":
            log.debug("stale nonce node=%s type_url=%s nonce=%s", node_id, type_url, request.response_nonce)
            return []
        resubscribed = reply == "answered" and not has_error
        clusters_changed = False
        if reply == "reply":
            if has_error:
                self.books.nacked(self.stream, type_url, state, request.version_info, request.error_detail.message)
            else:
                clusters_changed = type_url == CLUSTER and state.acked_version not in (None, request.version_info)
                self.books.acked(self.stream, type_url, state, request.version_info)
        # else: a new subscription (e.g. more route names) on top of an already answered response
        names = set(request.resource_names)
        state.wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        state.names = set() if state.wildcard else names
        self.books.subscribed(self.stream, type_url, state)
        if resubscribed and not state.wildcard:
            state.sent_version = None  # answer again: a new subscriber (a warming cluster) waits for it
        snapshot = self._snapshot()
        responses = [self._respond(type_url, snapshot)]
        endpoints = self.types.get(ENDPOINT)
        if clusters_changed and endpoints is not None and endpoints.nonce is None:
            endpoints.sent_version = None  # the updated clusters are warming: hand them their endpoints
            responses.append(self._respond(ENDPOINT, snapshot))
        return [r for r in responses if r is not None]

    def _unblock(self, state: _SotwState, version: str) -> bool:
        if state.sent_version != version:
            return False
        state.sent_version = None
        return True

    def _respond(self, type_url: str, snapshot: ProxySnapshot | None) -> Response | None:
        """The response this type needs now, or None (in flight, nothing new, nothing asked, no snapshot)."""
        state = self.types[type_url]
        if snapshot is None or state.nonce is not None or not state.active:
            return None
        version = snapshot.versions[type_url]
        names = None if state.wildcard else frozenset(state.names)
        if state.sent_version == version and state.sent_names == names:
            return None  # the proxy has it already, or rejected it: wait for the next change
        nonce = self.stream.next_nonce()
        response = Response(version_info=version, type_url=type_url, nonce=nonce,
                            resources=snapshot.packed(type_url, names))
        state.sent_names = names
        self.books.sent(self.stream, type_url, state, version, nonce, len(response.resources))
        return response
