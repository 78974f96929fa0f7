"""Gateway's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.model import Resource

HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
"""Plaintext HTTP servers (HTTP/1.1 and HTTP/2 alike: the connection manager's codec is AUTO)."""
TLS_PROTOCOLS = ("HTTPS",)
"""TLS terminated at the gateway, HTTP routes behind it (or, with tls.mode PASSTHROUGH, passed through by SNI)."""
PASSTHROUGH_PROTOCOLS = ("HTTPS", "TLS")
"""Servers whose TLS a ``tls.mode: PASSTHROUGH`` passes through to the backend, routed by SNI (VirtualService
``tls[]``); with a terminating mode (SIMPLE, MUTUAL, ...) a ``TLS`` server terminates TLS and routes the bytes
behind it as TCP (VirtualService ``tcp[]``, or ``tls[]`` by SNI)."""
TCP_PROTOCOLS = ("TCP", "MONGO")
"""Plaintext TCP servers routed by VirtualService ``tcp[]`` rules (MONGO is TCP to Envoy: no Mongo filter)."""
SIMPLE, MUTUAL, ISTIO_MUTUAL, PASSTHROUGH = "SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "PASSTHROUGH"
ISTIO_INGRESS_LABEL = ("istio", "ingressgateway")


@dataclass(frozen=True)
class ServerTls:
    mode: str = SIMPLE
    certificates: tuple[tuple[str, str], ...] = ()  # (certificate chain file, private key file); empty: the mesh CA
    ca_certificates: str | None = None  # file; None with MUTUAL: the mesh's trust bundle
    ca_crl: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    min_protocol_version: str | None = None
    max_protocol_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    https_redirect: bool = False


@dataclass(frozen=True)
class HostRef:
    """One ``servers[].hosts`` entry: ``namespace`` ``*`` (any, the default), ``.`` (the Gateway's) or a name."""

    namespace: str
    host: str


@dataclass(frozen=True)
class Server:
    port: int
    protocol: str
    hosts: tuple[HostRef, ...]
    port_name: str = ""
    name: str = ""
    bind: str | None = None
    tls: ServerTls | None = None

    @property
    def passes_through(self) -> bool:
        """TLS passed through to the backend without terminating it (``tls.mode: PASSTHROUGH``), routed by SNI."""
        return self.tls is not None and self.tls.mode == PASSTHROUGH

    @property
    def terminates_tls(self) -> bool:
        return self.protocol in PASSTHROUGH_PROTOCOLS and not self.passes_through

    @property
    def routes_tcp(self) -> bool:
        """Bytes routed by VirtualService ``tcp[]`` (and, TLS terminated, ``tls[]``) rules, not HTTP: a TCP or MONGO
        server, or a TLS one terminated here."""
        return self.protocol in TCP_PROTOCOLS or (self.protocol == "TLS" and not self.passes_through)

    @property
    def routes_http(self) -> bool:
        return not self.passes_through and not self.routes_tcp

    @property
    def speaks_tls(self) -> bool:
        """The client speaks TLS to this server (terminated or passed through): its port's chains match by SNI."""
        return self.terminates_tls or self.passes_through


@dataclass(frozen=True)
class GatewaySpec:
    selector: tuple[tuple[str, str], ...] = ()  # empty: every ingress gateway of the mesh
    servers: tuple[Server, ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether an ingress gateway instance with ``labels`` serves this Gateway. Istio's default gateway label
        ``istio: ingressgateway`` (in Istio's own samples) holds for every ingress gateway that has no ``istio``
        label of its own, so those files work as they are."""
        return all(labels.get(k) == v or (k, v) == ISTIO_INGRESS_LABEL and k not in labels for k, v in self.selector)


def host_ref(value: str) -> HostRef:
    ns, sep, host = value.rpartition("/")
    return HostRef(ns if sep else "*", host)


def _tls(block: Mapping[str, Any] | None, https_redirect: bool) -> ServerTls | None:
    if not block:
        return None
    certs = [(c["serverCertificate"], c["privateKey"]) for c in block.get("tlsCertificates") or ()]
    if block.get("serverCertificate"):
        certs.insert(0, (block["serverCertificate"], block["privateKey"]))
    return ServerTls(
        mode=block.get("mode") or SIMPLE,
        certificates=tuple(certs),
        ca_certificates=block.get("caCertificates") or None,
        ca_crl=block.get("caCrl") or None,
        subject_alt_names=tuple(block.get("subjectAltNames") or ()),
        verify_certificate_hash=tuple(block.get("verifyCertificateHash") or ()),
        verify_certificate_spki=tuple(block.get("verifyCertificateSpki") or ()),
        min_protocol_version=block.get("minProtocolVersion") or None,
        max_protocol_version=block.get("maxProtocolVersion") or None,
        cipher_suites=tuple(block.get("cipherSuites") or ()),
        https_redirect=https_redirect,
    )


def _server(s: Mapping[str, Any]) -> Server:
    tls_block = s.get("tls") or {}
    return Server(
        port=int(s["port"]["number"]),
        protocol=s["port"]["protocol"].upper(),
        port_name=s["port"].get("name") or "",
        hosts=tuple(host_ref(h) for h in s["hosts"]),
        name=s.get("name") or "",
        bind=s.get("bind") or None,
        tls=_tls(tls_block, bool(tls_block.get("httpsRedirect"))),
    )


def parse(spec: Mapping[str, Any]) -> GatewaySpec:
    """The typed spec of a Gateway whose ``spec`` the schema accepted."""
    return GatewaySpec(
        selector=tuple(sorted((spec.get("selector") or {}).items())),
        servers=tuple(_server(s) for s in spec.get("servers") or ()),
    )


def spec_of(resource: Resource) -> GatewaySpec:
    typed: GatewaySpec = resource.typed
    return typed


__all__ = ["GatewaySpec", "Server", "ServerTls", "HostRef", "HTTP_PROTOCOLS", "TLS_PROTOCOLS", "PASSTHROUGH_PROTOCOLS",
           "TCP_PROTOCOLS",
           "SIMPLE", "MUTUAL",
           "ISTIO_MUTUAL", "PASSTHROUGH", "host_ref", "parse", "spec_of"]
