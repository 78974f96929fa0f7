"""The endpoints of Envoy's xDS cluster: every known control plane replica, in a file Envoy watches.

The bootstrap's xDS cluster is an EDS cluster whose endpoints come from this file (file-based EDS,
``path_config_source``, a primary cluster: Envoy needs no xDS to read it). The agent rewrites it
atomically when the set of replicas changes; Envoy reloads it in place (no restart) and its ADS stream
stays where it is. When the replica Envoy is on dies, Envoy's reconnect goes to the next endpoint
(round robin), and it keeps serving its last config meanwhile.

EDS endpoints must be IP addresses: host names are resolved here (IPv4 first), again at most every
:data:`RESOLVE_EVERY` seconds; a name that does not resolve is left out (logged).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshcore import naming
from meshcore._files import os_errors_as, write_if_changed
from meshcore._addresses import is_ip
from meshcore.agent._net import split_host_port
from meshcore.agent._unchanged import UnchangedFile
from meshcore.errors import AgentError, ConfigError

log = logging.getLogger("meshcore.agent")

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
RESOLVE_EVERY = 30.0

Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """The addresses of ``host``, IPv4 first; [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    addrs = [str(info[4][0]) for info in infos]
    return sorted(dict.fromkeys(addrs), key=lambda a: (":" in a, addrs.index(a)))


def render_endpoints(addresses: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The file's content: one ClusterLoadAssignment for the xDS cluster (a DiscoveryResponse, JSON)."""
    lb = [{"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}} for h, p in addresses]
    return {"version_info": ",".join(f"{h}:{p}" for h, p in addresses),
            "resources": [{"@type": CLA_TYPE, "cluster_name": naming.XDS_CLUSTER, "endpoints": [{"lb_endpoints": lb}]}]}


class XdsEndpointsFile:
    """Writes the xDS cluster's endpoints file when the replicas' addresses change."""

    def __init__(self, path: Path, resolver: Resolver = resolve, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._resolver = resolver
        self._clock = clock
        self._resolved: dict[str, tuple[float, list[str]]] = {}
        self.addresses: tuple[tuple[str, int], ...] = ()
        self._file = UnchangedFile(path)

    def update(self, xds_addresses: Sequence[str]) -> bool:
        """Write the endpoints of ``xds_addresses`` (``host:port`` each); True when the file changed.
        Nothing is written when none of them resolves (Envoy keeps the endpoints it has)."""
        out: list[tuple[str, int]] = []
        for address in xds_addresses:
            try:
                host, port = split_host_port(address, what="xDS address")
            except ConfigError:  # a bad address from a replica is skipped, not fatal
                log.warning("ignoring the xDS address %r: not host:port", address)
                continue
            for ip in self._ips(host):
                if (ip, port) not in out:
                    out.append((ip, port))
        if not out:
            return False
        out.sort()  # the set matters, not the agent's order (which moves as replicas fail): no rewrite for that
        self.addresses = tuple(out)
        if self._file.holds(self.addresses):  # an idle tick: no JSON rendered, no file read
            return False
        with os_errors_as(AgentError, f"cannot write {self.path}"):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            changed = write_if_changed(self.path, json.dumps(render_endpoints(out), indent=2, sort_keys=True) + "\n",
                                       0o644)
        self._file.wrote(self.addresses)
        if changed:
            log.info("envoy xds endpoints written path=%s endpoints=%s", self.path,
                     ",".join(f"{h}:{p}" for h, p in out))
        return changed

    def _ips(self, host: str) -> list[str]:
        if is_ip(host):
            return [host]
        now = self._clock()
        cached = self._resolved.get(host)
        if cached is None or now - cached[0] > RESOLVE_EVERY:
            ips = self._resolver(host)
            if not ips:
                log.warning("the control plane host %s does not resolve; left out of envoy's xds endpoints", host)
            cached = self._resolved[host] = (now, ips)
        return cached[1]
