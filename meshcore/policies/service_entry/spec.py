"""ServiceEntry's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.model import Resource

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
"""Ports Envoy speaks HTTP on: routed by Host (and VirtualService ``http[]`` rules)."""
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
"""Ports the app speaks TLS on itself: passed through, routed by SNI (VirtualService ``tls[]`` rules)."""
TCP_PROTOCOLS = frozenset({"TCP", "MONGO", "MYSQL", "REDIS"})
"""Opaque TCP: one destination per port."""
PROTOCOLS = tuple(sorted(HTTP_PROTOCOLS | TLS_PROTOCOLS | TCP_PROTOCOLS))

DNS, DNS_ROUND_ROBIN, STATIC = "DNS", "DNS_ROUND_ROBIN", "STATIC"


def family(protocol: str) -> str:
    """``http``, ``tls`` or ``tcp``: how an Envoy listener treats a port of ``protocol``."""
    if protocol in HTTP_PROTOCOLS:
        return "http"
    return "tls" if protocol in TLS_PROTOCOLS else "tcp"


@dataclass(frozen=True)
class EntryPort:
    number: int
    protocol: str
    name: str
    target_port: int | None = None

    @property
    def family(self) -> str:
        return family(self.protocol)


@dataclass(frozen=True)
class EntryEndpoint:
    address: str
    ports: tuple[tuple[str, int], ...] = ()  # port name -> the endpoint's own port
    labels: tuple[tuple[str, str], ...] = ()
    locality: str = ""  # region/zone/subzone
    weight: int = 0  # 0: unset (Envoy's default, 1)

    def port_for(self, port: EntryPort) -> int:
        """The endpoint's port for ``port``: its own ``ports`` entry, else the target port, else the port."""
        return dict(self.ports).get(port.name) or port.target_port or port.number

    def selected_by(self, labels: Mapping[str, str] | None) -> bool:
        own = dict(self.labels)
        return all(own.get(k) == v for k, v in (labels or {}).items())


@dataclass(frozen=True)
class ServiceEntrySpec:
    hosts: tuple[str, ...]
    ports: tuple[EntryPort, ...]
    resolution: str
    endpoints: tuple[EntryEndpoint, ...] = ()
    location: str = "MESH_EXTERNAL"

    def port(self, number: int | None = None, families: tuple[str, ...] = ("http", "tls", "tcp")) -> EntryPort | None:
        """The port numbered ``number`` (None: the first) among ``families``."""
        for p in self.ports:
            if p.family in families and (number is None or p.number == number):
                return p
        return None


def _endpoint(e: Mapping[str, Any]) -> EntryEndpoint:
    return EntryEndpoint(
        address=e["address"],
        ports=tuple(sorted((e.get("ports") or {}).items())),
        labels=tuple(sorted((e.get("labels") or {}).items())),
        locality=e.get("locality") or "",
        weight=e.get("weight") or 0,
    )


def parse(spec: Mapping[str, Any]) -> ServiceEntrySpec:
    """The typed spec of a ServiceEntry whose ``spec`` the schema accepted."""
    return ServiceEntrySpec(
        hosts=tuple(spec.get("hosts") or ()),
        ports=tuple(EntryPort(p["number"], p["protocol"], p["name"], p.get("targetPort")) for p in spec.get("ports") or ()),
        resolution=spec["resolution"],
        endpoints=tuple(_endpoint(e) for e in spec.get("endpoints") or ()),
        location=spec.get("location") or "MESH_EXTERNAL",
    )


def spec_of(entry: Resource) -> ServiceEntrySpec:
    typed: ServiceEntrySpec = entry.typed
    return typed


__all__ = ["ServiceEntrySpec", "EntryPort", "EntryEndpoint", "HTTP_PROTOCOLS", "TLS_PROTOCOLS", "TCP_PROTOCOLS",
           "PROTOCOLS", "DNS", "DNS_ROUND_ROBIN", "STATIC", "family", "parse", "spec_of"]
