"""WAN federation of doubles: ``?dc=<other>`` forwarded to that datacenter's double, as Consul servers do.

A Consul server answers a request naming another datacenter (``?dc=dc2``) by forwarding it over the WAN to a
server of that datacenter and relaying the answer (blocking queries included: the remote server blocks).
:meth:`ConsulDouble.join_wan` links doubles the same way: each knows the others' addresses by datacenter name;
``/v1/catalog/datacenters`` lists its own and every joined one; a datacenter nobody joined is Consul's
``500 No path to datacenter``. Stdlib only (the double runs without site-packages).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

# Headers of the remote answer worth relaying (Consul's own; the transport ones are set by the handler).
_RELAYED = ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact", "X-Consul-Effective-Consistency")


class WanPeers:
    """Datacenter name -> base URL of a double serving it (shared by a double's HTTP server and its restarts)."""

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}

    def add(self, datacenter: str, address: str) -> None:
        self.peers[datacenter] = address.rstrip("/")

    def datacenters(self, own: str) -> list[str]:
        """Own first, then the others sorted (Consul sorts by estimated round trip time; the own is nearest)."""
        return [own, *sorted(dc for dc in self.peers if dc != own)]

    def forward(self, datacenter: str, method: str, path_and_query: str, headers: Any,
                body: bytes) -> tuple[int, bytes, dict[str, str], str]:
        """Relay one request to ``datacenter``'s double: (status, body, Consul headers, content type).

        Raises KeyError when no double of that datacenter joined (the caller answers "No path to datacenter").
        """
        base = self.peers[datacenter]
        out_headers = {k: v for k, v in headers.items() if k.lower() in ("x-consul-token", "authorization",
                                                                        "content-type")}
        req = urllib.request.Request(base + path_and_query, data=body or None, method=method, headers=out_headers)
        try:
            # a blocking query waits at most 10 minutes (+1/16) remotely: never give up before it answers
            with urllib.request.urlopen(req, timeout=700) as resp:
                status, data, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, data, got = exc.code, exc.read(), exc.headers
        except OSError as exc:  # the remote datacenter's servers are unreachable
            return 500, f"rpc error: failed to reach datacenter {datacenter}: {exc}".encode(), {}, "text/plain"
        relayed = {h: got[h] for h in _RELAYED if got.get(h) is not None}
        return status, data, relayed, got.get("Content-Type") or "application/json"
