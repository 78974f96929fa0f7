"""Sidecar's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.model import Resource

from ..destination_rule.spec import ConnectionPool, parse_pool
from .ingress_schema import IngressListener, parse_ingress

DEFAULT_BIND = "127.0.0.1"


@dataclass(frozen=True)
class EgressPort:
    number: int
    protocol: str  # HTTP | HTTPS | TLS
    name: str = ""

    @property
    def family(self) -> str:
        return "http" if self.protocol == "HTTP" else "tls"


@dataclass(frozen=True)
class EgressListener:
    hosts: tuple[str, ...]
    port: EgressPort | None = None  # None: scoping only (Istio's catch-all listener)
    bind: str = DEFAULT_BIND


@dataclass(frozen=True)
class SidecarSpec:
    egress: tuple[EgressListener, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    mode: str | None = None  # outboundTrafficPolicy.mode; None: the mesh default
    inbound_pool: ConnectionPool | None = None  # inboundConnectionPool: towards the selected workloads' apps
    ingress: tuple[IngressListener, ...] = ()  # ingress[]: the selected workloads' inbound port (.ingress)

    @property
    def listeners(self) -> tuple[EgressListener, ...]:
        """The egress entries with a port: the listeners this Sidecar adds to its proxies."""
        return tuple(e for e in self.egress if e.port is not None)


def _listener(e: Mapping[str, Any]) -> EgressListener:
    port = e.get("port")
    return EgressListener(
        hosts=tuple(e.get("hosts") or ()),
        port=None if not port else EgressPort(port["number"], port["protocol"], port.get("name") or ""),
        bind=e.get("bind") or DEFAULT_BIND,
    )


def parse(spec: Mapping[str, Any]) -> SidecarSpec:
    return SidecarSpec(
        egress=tuple(_listener(e) for e in spec.get("egress") or ()),
        selector=tuple(sorted(((spec.get("workloadSelector") or {}).get("labels") or {}).items())),
        mode=(spec.get("outboundTrafficPolicy") or {}).get("mode"),
        inbound_pool=parse_pool(spec.get("inboundConnectionPool")),
        ingress=parse_ingress(spec.get("ingress")),
    )


def spec_of(sidecar: Resource) -> SidecarSpec:
    typed: SidecarSpec = sidecar.typed
    return typed


__all__ = ["SidecarSpec", "EgressListener", "EgressPort", "DEFAULT_BIND", "parse", "spec_of"]
