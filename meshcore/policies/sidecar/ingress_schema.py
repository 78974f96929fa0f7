"""Sidecar ``ingress[]``: its schema and typed form (what :mod:`.ingress` turns into Envoy config).

A VM workload's inbound listener is its Consul registration: the sidecar service's address and port, in front of
the app at ``local_service_address`` and the service port. An ``ingress[]`` entry describes that listener for the
instances its Sidecar selects, as Istio's does for a pod:

```yaml
ingress:
- port: {number: 9080, protocol: HTTP, name: http}   # the registered service port (or the sidecar's port)
  defaultEndpoint: unix:///run/productpage.sock      # 127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT, [::]:PORT, unix://
  bind: 0.0.0.0                                      # an address of the VM (the instance's, loopback, any)
  captureMode: NONE                                  # DEFAULT | NONE (IPTABLES: no capture on VMs)
  connectionPool: {tcp: {maxConnections: 100}}       # this port's pool (instead of inboundConnectionPool)
  tls:                                               # callers outside the mesh: PERMISSIVE or DISABLE ports only
    mode: SIMPLE                                     # SIMPLE | MUTUAL
    serverCertificate: /etc/meshcore/tls/productpage.crt
    privateKey: /etc/meshcore/tls/productpage.key
```

Which instance an entry describes, and the checks that need the catalog and the PeerAuthentications (a port no
entry describes, ``bind`` not an address of the VM, ``tls`` on a STRICT port) are generation's: see
:mod:`.ingress`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from meshcore.resources.schema import (
    INVALID,
    Context,
    Custom,
    Enum,
    IPAddress,
    ListOf,
    Obj,
    Path,
    Port,
    Required,
    Str,
)

from ...xds.generate.sidecar_ingress import META_PROTOCOL as PROTOCOLS
from ..destination_rule.fields_schema import CONNECTION_POOL
from ..destination_rule.spec import ConnectionPool, parse_pool
from ..gateway.schema import pem_file
from ..gateway.spec import ServerTls
from ..gateway.spec import _tls as server_tls  # the same Istio type (ServerTLSSettings), parsed once

SIMPLE, MUTUAL = "SIMPLE", "MUTUAL"
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")

_K8S_SECRET = ("a Kubernetes secret: meshcore's sidecars read certificates from files on the VM; write "
               "serverCertificate, privateKey and caCertificates (paths of PEM files)")
_TLS_MODE = {
    "ISTIO_MUTUAL": "the mesh's own mTLS is what the port's PeerAuthentication decides (STRICT or PERMISSIVE); "
                    "ingress tls is for callers outside the mesh: use SIMPLE or MUTUAL",
    "OPTIONAL_MUTUAL": "Istio's Sidecar ingress takes SIMPLE or MUTUAL; use MUTUAL to require client certificates, "
                       "SIMPLE not to ask for them",
    "PASSTHROUGH": "to pass the caller's TLS through to the app, leave tls out and give the port protocol TLS",
    "AUTO_PASSTHROUGH": "to pass the caller's TLS through to the app, leave tls out and give the port protocol TLS",
}


class _Mode(Enum):
    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, str) and value in _TLS_MODE:
            ctx.add(path, f"mode {value} is not supported on a sidecar's inbound port: {_TLS_MODE[value]}")
            return INVALID
        return super().check(value, path, ctx)


FILE = pem_file("the VM")

_CLIENT_CHECKS = ("caCertificates", "caCrl", "subjectAltNames", "verifyCertificateHash", "verifyCertificateSpki")


def _tls_rules(cleaned: dict, path: Path, ctx: Context) -> None:
    mode = cleaned.get("mode") or SIMPLE
    if bool(cleaned.get("serverCertificate")) != bool(cleaned.get("privateKey")):
        ctx.add(path, "serverCertificate and privateKey go together")
    elif not cleaned.get("serverCertificate") and not cleaned.get("tlsCertificates"):
        ctx.add(path, f"{mode} needs the sidecar's certificate: give serverCertificate and privateKey (or "
                      "tlsCertificates)")
    if mode == MUTUAL and not cleaned.get("caCertificates"):
        ctx.add(path.field("caCertificates"), "MUTUAL verifies the callers' certificates: give the CA bundle that "
                                              "issued them (a PEM file on the VM)")
    if mode == SIMPLE:
        for f in _CLIENT_CHECKS:
            if f in cleaned:
                ctx.add(path.field(f), f"{f} checks client certificates, which SIMPLE does not ask for: use MUTUAL")
    low, high = cleaned.get("minProtocolVersion"), cleaned.get("maxProtocolVersion")
    if low and high and "TLS_AUTO" not in (low, high) and TLS_VERSIONS.index(low) > TLS_VERSIONS.index(high):
        ctx.add(path.field("minProtocolVersion"), f"{low} is above maxProtocolVersion {high}")


TLS = Obj(
    {
        "mode": _Mode(SIMPLE, MUTUAL),
        "serverCertificate": FILE,
        "privateKey": FILE,
        "caCertificates": FILE,
        "caCrl": FILE,
        "tlsCertificates": ListOf(Obj({"serverCertificate": Required(FILE), "privateKey": Required(FILE)},
                                      refused={"caCertificates": "give caCertificates once, on tls"}), min_items=1),
        "subjectAltNames": ListOf(Str(min_len=1), min_items=1),
        "verifyCertificateSpki": ListOf(Str(min_len=1), min_items=1),
        "verifyCertificateHash": ListOf(Str(min_len=1), min_items=1),
        "minProtocolVersion": Enum(*TLS_VERSIONS),
        "maxProtocolVersion": Enum(*TLS_VERSIONS),
        "cipherSuites": ListOf(Str(min_len=1), min_items=1),
    },
    rules=[_tls_rules],
    refused={
        "credentialName": _K8S_SECRET, "credentialNames": _K8S_SECRET, "caCertCredentialName": _K8S_SECRET,
        "httpsRedirect": "a Gateway option (a plaintext server answering 301); a sidecar's inbound port serves TLS "
                         "or not, by this tls block",
        "insecureSkipVerify": "a client-side option (DestinationRule tls); a server verifies its callers with MUTUAL",
    },
)


def _endpoint_problem(value: str) -> str | None:
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if path.startswith("/") or (path.startswith("@") and len(path) > 1):
            return None
        return f"{json.dumps(value)}: write unix:///absolute/path (a socket file) or unix://@name (abstract)"
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and 1 <= int(port) <= 65535 and host in ("127.0.0.1", "[::1]", "0.0.0.0", "[::]"):
        return None
    return (f"{json.dumps(value)}: write 127.0.0.1:PORT or [::1]:PORT (the app on loopback), 0.0.0.0:PORT or "
            "[::]:PORT (the app on the instance's address) or unix:///path (a unix socket); other addresses are "
            "not the workload's")


def _capture(value: str) -> str | None:
    if value == "IPTABLES":
        return ("meshcore configures no traffic capture on the VMs: mesh callers reach the sidecar port the "
                "registration names; use NONE")
    return None


PORT = Obj(
    {
        "number": Required(Port()),
        "protocol": Required(Enum(*PROTOCOLS, any_case=True)),
        "name": Str(min_len=1, max_len=63),
    },
    refused={"targetPort": "the app is reached where the registration says (local_service_address and the "
                           "service port); to forward elsewhere, set defaultEndpoint"},
)

INGRESS = Obj(
    {
        "port": Required(PORT),
        "bind": IPAddress(),
        "captureMode": Custom(Enum("DEFAULT", "NONE", "IPTABLES"), _capture),
        "defaultEndpoint": Custom(Str(min_len=1), _endpoint_problem),
        "connectionPool": CONNECTION_POOL,
        "tls": TLS,
    },
)


def distinct_ports(cleaned: dict, path: Path, ctx: Context) -> None:
    """The spec rule: one ``ingress[]`` entry per port number."""
    seen: dict[int, int] = {}
    for i, e in enumerate(cleaned.get("ingress") or ()):
        number = e["port"]["number"]
        if number in seen:
            ctx.add(path.field("ingress").index(i).field("port").field("number"),
                    f"port {number} is already described by ingress[{seen[number]}]")
        seen.setdefault(number, i)


# --- typed form --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where the sidecar forwards: ``pipe`` (a unix socket path, ``@name`` abstract), else ``host``:``port``
    where ``host`` is ``127.0.0.1``/``::1`` or, for ``instance``, the instance's own address."""

    port: int = 0
    host: str = ""
    instance: bool = False
    pipe: str = ""


@dataclass(frozen=True)
class IngressListener:
    number: int
    protocol: str  # Istio's name (PROTOCOLS)
    name: str = ""
    bind: str | None = None
    endpoint: Endpoint | None = None
    pool: ConnectionPool | None = None
    tls: ServerTls | None = None  # Istio's ServerTLSSettings, as a Gateway server's (SIMPLE or MUTUAL here)

    @property
    def meta_protocol(self) -> str:
        return PROTOCOLS[self.protocol]


def _endpoint(value: str | None) -> Endpoint | None:
    if not value:
        return None
    if value.startswith("unix://"):
        return Endpoint(pipe=value[len("unix://"):])
    host, _, port = value.rpartition(":")
    address = ipaddress.ip_address(host.strip("[]"))
    return Endpoint(port=int(port), host=str(address), instance=address.is_unspecified)


def parse_ingress(entries: Any) -> tuple[IngressListener, ...]:
    """The typed ``ingress[]`` of a validated spec."""
    return tuple(IngressListener(
        number=e["port"]["number"], protocol=e["port"]["protocol"], name=e["port"].get("name") or "",
        bind=e.get("bind") or None, endpoint=_endpoint(e.get("defaultEndpoint")),
        pool=parse_pool(e.get("connectionPool")), tls=server_tls(e.get("tls"), False),
    ) for e in entries or ())


__all__ = ["INGRESS", "PROTOCOLS", "SIMPLE", "MUTUAL", "TLS_VERSIONS", "Endpoint", "IngressListener",
           "distinct_ports", "parse_ingress"]
