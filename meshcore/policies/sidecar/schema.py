"""Sidecar: what each selected proxy may reach, its egress listeners and its outbound traffic policy (as Istio's).

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}   # none: every workload of the namespace (root namespace: mesh)
  egress:
  - hosts: ["./details", "./reviews"]              # scoping: the upstreams (and hosts) these workloads may reach
  - port: {number: 15080, protocol: HTTP, name: egress-http}   # an egress listener on bind:port (HTTP by Host)
    bind: 127.0.0.1                                # the default; captureMode NONE (there is no capture on VMs)
    hosts: ["*/api.payments.example"]
  - port: {number: 15443, protocol: TLS, name: egress-tls}     # TLS (or HTTPS): passed through, routed by SNI
    hosts: ["*/*.payments.example"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}      # ALLOW_ANY (Istio's default) | REGISTRY_ONLY
  inboundConnectionPool:                           # limits towards the workloads' own apps (as DestinationRule's)
    tcp: {maxConnections: 100}
    http: {http1MaxPendingRequests: 10, http2MaxRequests: 100}
```

Hosts are Istio's ``<namespace>/<host>`` (:mod:`meshcore.xds.generate.sidecar_scope` resolves them). A proxy gets
only the upstreams its service's Sidecar lists: the others get no listener, cluster or endpoints. Egress listeners
serve the ServiceEntry hosts they list; a destination no ServiceEntry declares is answered 502 (HTTP) or refused
(TLS) under REGISTRY_ONLY, and forwarded to the name the app asked for (Host / SNI, resolved by Envoy's dynamic
forward proxy) under ALLOW_ANY. ``ingress`` describes the workloads' inbound port (:mod:`.ingress_schema`).
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from meshcore.errors import FieldError
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import ROOT_NAMESPACE
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    Context,
    Custom,
    Enum,
    Int,
    IPAddress,
    LabelKey,
    ListOf,
    Obj,
    Path,
    Required,
    Str,
    StringMap,
)

from ..destination_rule.fields_schema import CONNECTION_POOL
from ._egress_proxy_schema import EGRESS_PROXY, egress_proxy_rules
from .ingress_schema import INGRESS, distinct_ports
from .spec import parse

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "Sidecar"


_NAME = r"(\*|\*\.[a-z0-9.-]+|[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)"
_HOST = re.compile(rf"(\*|\.|~|[a-z0-9]([a-z0-9-]*[a-z0-9])?)/{_NAME}")


def _host_problem(value: str) -> str | None:
    if _HOST.fullmatch(value):
        return None
    if "/" not in value:
        return (f"{json.dumps(value)}: write <namespace>/<host> as Istio does, e.g. \"./{value}\" (the Sidecar's "
                f"namespace) or \"*/{value}\" (any namespace)")
    return (f"{json.dumps(value)}: the namespace is *, ., ~ or a name, the host *, *.<domain> or one name "
            "(a Consul service or a ServiceEntry host)")


def _capture(value: str) -> str | None:
    if value == "IPTABLES":
        return "meshcore configures no traffic capture on the VMs; apps connect to the listener: use NONE"
    return None


def _egress_protocol(value: str) -> str | None:
    if value in ("HTTP", "HTTPS", "TLS"):
        return None
    return (f"an egress listener routes HTTP by Host and TLS by SNI; {value} carries neither, so reach such a "
            "ServiceEntry host with an upstream naming it")


EGRESS_PORT = Obj(
    {
        "number": Required(Int(1, 65535)),
        "protocol": Required(Custom(Enum("HTTP", "HTTPS", "TLS", "HTTP2", "GRPC", "TCP", "MONGO", "MYSQL", "REDIS", any_case=True),
                                    _egress_protocol)),
        "name": Str(min_len=1, max_len=63),
    },
    refused={"targetPort": "an egress listener forwards to each destination's own port; leave targetPort out"},
)

EGRESS = Obj(
    {
        "hosts": Required(ListOf(Custom(Str(min_len=1), _host_problem), min_items=1)),
        "port": EGRESS_PORT,
        "bind": IPAddress(),
        "captureMode": Custom(Enum("DEFAULT", "NONE", "IPTABLES"), _capture),
    },
)


def _bind_needs_port(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[tuple[str, int], int] = {}
    for i, e in enumerate(cleaned.get("egress") or ()):
        at = path.field("egress").index(i)
        if "bind" in e and "port" not in e:
            ctx.add(at.field("bind"), "bind applies to an egress listener: give port too")
        if "port" in e:
            key = (e.get("bind") or "127.0.0.1", e["port"]["number"])
            if key in seen:
                ctx.add(at.field("port").field("number"),
                        f"{key[0]}:{key[1]} is already the listener of egress[{seen[key]}]")
            else:
                seen[key] = i


SPEC = Obj(
    {
        "workloadSelector": Obj({"labels": StringMap(key=LabelKey(), value=Str(max_len=63), max_items=None)}),
        "egress": ListOf(EGRESS),
        "outboundTrafficPolicy": Obj({"mode": Enum("ALLOW_ANY", "REGISTRY_ONLY"), "egressProxy": EGRESS_PROXY}),
        "inboundConnectionPool": CONNECTION_POOL,  # towards the workloads' own apps (see .inbound_pool)
        "ingress": ListOf(INGRESS),  # the inbound port of the selected workloads (see .ingress_schema)
    },
    rules=[_bind_needs_port, distinct_ports, egress_proxy_rules],  # egressProxy: see .egress_proxy
)

KIND = KindSpec.from_schema(
    API_VERSION, KIND_NAME, SPEC, parse=parse,
    summary="which hosts selected proxies may reach, their egress listeners and outbound traffic policy",
)


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """One Sidecar without a workloadSelector per namespace (Istio's rule: which one applies would be ambiguous)."""
    errors: list[FieldError] = []
    seen: dict[str, Resource] = {}
    for r in sorted((r for r in resources if r.kind == KIND_NAME), key=lambda r: (r.namespace, r.name)):
        if ((r.spec or {}).get("workloadSelector") or {}).get("labels"):
            continue
        if r.namespace in seen:
            o = seen[r.namespace]
            scope = "the mesh" if r.namespace == ROOT_NAMESPACE else f"namespace {r.namespace}"
            errors.append(FieldError(str(r.key), None, "spec.workloadSelector",
                                     f"Sidecar {o.namespace}/{o.name} already applies to all of {scope}; give this one "
                                     "a workloadSelector or merge the two"))
        else:
            seen[r.namespace] = r
    return errors


__all__ = ["API_VERSION", "KIND", "KIND_NAME", "SPEC", "validate_set"]
