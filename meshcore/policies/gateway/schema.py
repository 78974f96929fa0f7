"""Gateway: the servers (ports, hosts, TLS) an ingress gateway VM listens with (spelled like Istio's).

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {app: ingress-gateway}        # labels of ingress-gateway instances (app = the service name, meta, tags)
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["bookinfo.example.com"]
    tls: {httpsRedirect: true}            # optional: answer 301 to https
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["bookinfo.example.com", "*.shop.example.com"]
    tls:
      mode: SIMPLE                        # SIMPLE | MUTUAL | OPTIONAL_MUTUAL | ISTIO_MUTUAL
      serverCertificate: /etc/meshcore/gateway/bookinfo.crt   # files on the gateway VM; left out: the mesh CA
      privateKey: /etc/meshcore/gateway/bookinfo.key
      caCertificates: /etc/meshcore/gateway/clients-ca.crt    # MUTUAL; left out: the mesh's trust bundle
  - port: {number: 8443, name: tls, protocol: TLS}      # or HTTPS: the client's TLS passed through, not terminated
    hosts: ["db.example.com"]
    tls: {mode: PASSTHROUGH}              # routed by SNI by the bound VirtualServices' tls[] rules
  - port: {number: 31400, name: tcp, protocol: TCP}     # or MONGO (TCP to Envoy): routed by tcp[] rules
    hosts: ["*"]
  - port: {number: 9443, name: tls, protocol: TLS}      # TLS terminated (SIMPLE, MUTUAL, ISTIO_MUTUAL), TCP behind
    hosts: ["*.tcp.example"]
    tls: {mode: SIMPLE}
```

A VirtualService binds to it with ``gateways: [bookinfo-gateway]`` (or ``<namespace>/bookinfo-gateway``) and hosts
that match a server's (``hosts`` may then be external names such as ``bookinfo.example.com``). Servers of every
Gateway selecting one gateway are merged by port; TLS servers on one port (terminated or passed through) are told
apart by SNI. ``AUTO_PASSTHROUGH`` (Istio's east-west gateway) is refused: meshcore's mesh gateways do that between
datacenters.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    INVALID,
    Bool,
    Context,
    Custom,
    Enum,
    IPAddress,
    LabelKey,
    ListOf,
    Obj,
    Path,
    Port,
    Required,
    Schema,
    Str,
    StringMap,
)

from .spec import (
    HTTP_PROTOCOLS,
    ISTIO_MUTUAL,
    MUTUAL,
    PASSTHROUGH,
    PASSTHROUGH_PROTOCOLS,
    SIMPLE,
    TCP_PROTOCOLS,
    host_ref,
    parse,
    spec_of,
)

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "Gateway"
OPTIONAL_MUTUAL = "OPTIONAL_MUTUAL"
TLS_MODES = (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL, PASSTHROUGH)
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
_DNS = re.compile(r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
_NAMESPACE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

_K8S_SECRET = ("a Kubernetes secret: meshcore gateways read certificates from files on the gateway VM "
               "(serverCertificate, privateKey, caCertificates) or use the mesh CA (leave them out)")


def host_problem(value: str) -> str | None:
    """A server host: ``[<namespace>/]<host>``; the host ``*``, ``*.<domain>`` or a DNS name, without a port."""
    ref = host_ref(value)
    if ref.namespace not in ("*", ".") and not _NAMESPACE.fullmatch(ref.namespace):
        return f"{json.dumps(value)}: the part before '/' is a namespace ('*' any, '.' the Gateway's own)"
    if ref.host == "*" or _DNS.fullmatch(ref.host):
        return None
    if ":" in ref.host:
        return f"{json.dumps(value)}: hosts have no port (the server's port is port.number)"
    return f"{json.dumps(value)} is not a host: write a DNS name, *.<domain> or *"


def gateway_host_problem(value: str) -> str | None:
    """A VirtualService host (no namespace part): a DNS name, ``*.<domain>`` or ``*``; a service name is one too."""
    if "/" in value:
        return f"{json.dumps(value)}: a VirtualService host has no namespace part"
    return host_problem(value)


class _Protocol(Schema):
    """Istio's protocol names, case-insensitive; the ones meshcore gateways do not serve say what to use."""

    expected = "a protocol"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        upper = value.upper()
        if upper in HTTP_PROTOCOLS + PASSTHROUGH_PROTOCOLS + TCP_PROTOCOLS:
            return upper
        if upper == "GRPC-WEB":
            ctx.add(path, f"protocol {value} is not served by meshcore gateways: use HTTP, HTTP2 or GRPC (gRPC-Web "
                          "needs Envoy's grpc_web filter, which gateways do not add)")
        else:
            ctx.add(path, f"must be one of HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO, got {json.dumps(value)}")
        return INVALID


AUTO_PASSTHROUGH = ("AUTO_PASSTHROUGH is Istio's east-west gateway between networks (the destination encoded in the "
                    "SNI, the mesh's mTLS passed through); in meshcore that is a mesh gateway between datacenters "
                    "(a Consul mesh-gateway service, see docs/multi-dc.md); to pass a client's TLS through an ingress "
                    "gateway, use PASSTHROUGH with VirtualService tls[] routes")


class _TlsMode(Enum):
    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if value == "AUTO_PASSTHROUGH":
            ctx.add(path, f"AUTO_PASSTHROUGH is not supported: {AUTO_PASSTHROUGH}")
            return INVALID
        return super().check(value, path, ctx)


def pem_file(host: str) -> Custom:
    """A path of a PEM file on ``host`` ("the gateway VM", "the VM"): absolute, since Envoy reads it there."""
    def problem(value: str) -> str | None:
        if not value.startswith("/"):
            return f"{json.dumps(value)}: give an absolute path of a PEM file on {host}"
        return None
    return Custom(Str(min_len=1), problem)


FILE = pem_file("the gateway VM")


def _cert_pair(cleaned: dict, path: Path, ctx: Context) -> None:
    if bool(cleaned.get("serverCertificate")) != bool(cleaned.get("privateKey")):
        ctx.add(path, "serverCertificate and privateKey go together (or leave both out for the mesh CA's certificate)")


_SERVER_SIDE = ("serverCertificate", "privateKey", "tlsCertificates", "caCertificates", "caCrl", "subjectAltNames",
                "verifyCertificateHash", "verifyCertificateSpki", "minProtocolVersion", "maxProtocolVersion",
                "cipherSuites")


def _tls_rules(cleaned: dict, path: Path, ctx: Context) -> None:
    mode = cleaned.get("mode") or SIMPLE
    if mode == PASSTHROUGH:
        for f in _SERVER_SIDE:
            if f in cleaned:
                ctx.add(path.field(f), f"PASSTHROUGH does not terminate TLS (the backend presents its own certificate "
                                       f"and checks its clients itself), so {f} would not apply; leave it out")
        return
    files = [f for f in ("serverCertificate", "privateKey", "caCertificates", "tlsCertificates", "caCrl")
             if cleaned.get(f)]
    if mode == ISTIO_MUTUAL and files:
        ctx.add(path.field(files[0]), "ISTIO_MUTUAL uses the mesh CA's certificates both ways; leave the files out "
                                      "(or use MUTUAL with your own)")
    if mode == SIMPLE and any(cleaned.get(f) for f in ("caCertificates", "subjectAltNames", "verifyCertificateHash",
                                                       "verifyCertificateSpki", "caCrl")):
        ctx.add(path.field("mode"), "client certificate checks (caCertificates, subjectAltNames, verifyCertificate*, "
                                    "caCrl) need mode MUTUAL or OPTIONAL_MUTUAL")


TLS_CERTIFICATE = Obj(
    {"serverCertificate": Required(FILE), "privateKey": Required(FILE)},
    refused={"caCertificates": "give caCertificates once, on tls"},
)

TLS = Obj(
    {
        "httpsRedirect": Bool(),
        "mode": _TlsMode(*TLS_MODES),
        "serverCertificate": FILE,
        "privateKey": FILE,
        "caCertificates": FILE,
        "caCrl": FILE,
        "tlsCertificates": ListOf(TLS_CERTIFICATE, min_items=1),
        "subjectAltNames": ListOf(Str(min_len=1), min_items=1),
        "verifyCertificateSpki": ListOf(Str(min_len=1), min_items=1),
        "verifyCertificateHash": ListOf(Str(min_len=1), min_items=1),
        "minProtocolVersion": Enum(*TLS_VERSIONS),
        "maxProtocolVersion": Enum(*TLS_VERSIONS),
        "cipherSuites": ListOf(Str(min_len=1), min_items=1),
    },
    rules=[_cert_pair, _tls_rules],
    refused={
        "credentialName": _K8S_SECRET,
        "credentialNames": _K8S_SECRET,
        "caCertCredentialName": _K8S_SECRET,
        "insecureSkipVerify": "a client-side option (DestinationRule); a gateway server verifies clients with MUTUAL",
    },
)

PORT = Obj(
    {"number": Required(Port()), "name": Str(min_len=1), "protocol": Required(_Protocol())},
    refused={"targetPort": "a Kubernetes Service's target port: a meshcore gateway listens on port.number itself"},
)


def _server_rules(cleaned: dict, path: Path, ctx: Context) -> None:
    protocol = cleaned["port"]["protocol"]
    tls = cleaned.get("tls") or {}
    if protocol in PASSTHROUGH_PROTOCOLS and not tls:
        ctx.add(path.field("tls"), f"a {protocol} server needs tls (mode and certificates, or mode alone for the mesh "
                                   "CA; mode PASSTHROUGH to pass the client's TLS through by SNI)")
    if protocol in TCP_PROTOCOLS and tls:
        ctx.add(path.field("tls"), f"a {protocol} server is plaintext TCP: to terminate TLS at the gateway use protocol "
                                   "TLS with tls.mode SIMPLE (or MUTUAL, ISTIO_MUTUAL), routed by tcp[] rules behind it")
    if protocol in HTTP_PROTOCOLS and set(tls) - {"httpsRedirect"}:
        ctx.add(path.field("tls"), f"a {protocol} server is plaintext: only tls.httpsRedirect applies (use protocol "
                                   "HTTPS to terminate TLS)")
    if protocol in PASSTHROUGH_PROTOCOLS and tls.get("httpsRedirect"):
        ctx.add(path.field("tls").field("httpsRedirect"), "httpsRedirect belongs on the plaintext (HTTP) server")


SERVER = Obj(
    {
        "port": Required(PORT),
        "hosts": Required(ListOf(Custom(Str(min_len=1), host_problem), min_items=1)),
        "bind": IPAddress(),
        "name": Str(min_len=1),
        "tls": TLS,
    },
    rules=[_server_rules],
    refused={"defaultEndpoint": "a sidecar option (Sidecar ingress); gateways route by VirtualService"},
)


def _servers_agree(spec: dict, path: Path, ctx: Context) -> None:
    """One protocol family per port, and no two TLS servers of a port for the same host (SNI tells them apart)."""
    by_port: dict[tuple[str, int], tuple[int, str]] = {}
    sni: dict[tuple[str, int, str], int] = {}
    for i, server in enumerate(spec.get("servers") or ()):
        key = (server.get("bind") or "", server["port"]["number"])
        tls = server["port"]["protocol"] in PASSTHROUGH_PROTOCOLS  # terminated or passed through: chains by SNI
        family = "TLS" if tls else "plaintext TCP" if server["port"]["protocol"] in TCP_PROTOCOLS else "plaintext HTTP"
        if key in by_port and by_port[key][1] != family:
            ctx.add(path.field("servers").index(i).field("port"),
                    f"port {key[1]} already serves {by_port[key][1]} at servers[{by_port[key][0]}]; "
                    + ("plaintext and TLS servers need different ports" if "TLS" in (family, by_port[key][1]) else
                       "plaintext HTTP and TCP servers need different ports (nothing in the bytes tells them apart)"))
        by_port.setdefault(key, (i, family))
        for host in server["hosts"] if tls else ():
            name = host_ref(host).host
            if (*key, name) in sni:
                ctx.add(path.field("servers").index(i).field("hosts"),
                        f"host {json.dumps(name)} on port {key[1]} is already served by servers[{sni[(*key, name)]}]")
            sni.setdefault((*key, name), i)


SPEC = Obj(
    {
        "selector": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "servers": Required(ListOf(SERVER, min_items=1)),
    },
    rules=[_servers_agree],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    parse=parse,
    summary="ports, hosts and TLS (SIMPLE, MUTUAL, the mesh CA) of ingress gateway VMs; VirtualServices bind to it",
)


# --- scope (pure) --------------------------------------------------------------------------------------


def gateway_ref(namespace: str, ref: str) -> str:
    """A VirtualService's ``gateways`` entry as ``<namespace>/<name>`` (a bare name is in the VirtualService's)."""
    return ref if "/" in ref else f"{namespace}/{ref}"


def gateways_for(resources: Iterable[Resource], labels: Mapping[str, str]) -> list[Resource]:
    """The Gateways whose selector an ingress gateway instance with ``labels`` matches, by (namespace, name)."""
    chosen = [r for r in resources if r.kind == KIND_NAME and spec_of(r).selects(labels)]
    return sorted(chosen, key=lambda r: (r.namespace, r.name))


__all__ = ["API_VERSION", "KIND", "KIND_NAME", "TLS_MODES", "TLS_VERSIONS", "OPTIONAL_MUTUAL", "gateway_ref",
           "gateways_for", "host_problem", "gateway_host_problem"]
