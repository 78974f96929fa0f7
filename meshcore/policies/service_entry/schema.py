"""ServiceEntry: a service outside the mesh, spelled like Istio's, that the mesh's proxies can reach.

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: payments-api}
spec:
  hosts: [api.payments.example]     # DNS names (at least one dot: a name without one is a Consul service)
  location: MESH_EXTERNAL           # the default; MESH_INTERNAL is refused (register mesh workloads in Consul)
  ports:
  - {number: 443, name: https, protocol: TLS}     # HTTP | HTTP2 | GRPC | GRPC-WEB | HTTPS | TLS | TCP | MONGO | MYSQL | REDIS
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  resolution: DNS                   # DNS (every address resolved, all used) | DNS_ROUND_ROBIN (one name) | STATIC (IPs)
  endpoints:                        # optional with DNS (the hosts themselves are resolved); required with STATIC
  - {address: 10.0.0.7, ports: {http: 8081}, labels: {version: v1}, locality: eu/eu-1, weight: 3}
```

How an app reaches it (see docs/traffic.md, "Services outside the mesh"): an upstream naming the host (Consul
``upstreams: [{destination_name: api.payments.example, local_bind_port: 9443}]``), or a Sidecar egress listener
(``egress[].port``) that routes HTTP by Host and TLS by SNI. The host can be a VirtualService or DestinationRule
host; subsets select endpoints by their ``labels``. Istio's ``resolution: NONE`` and ``addresses`` need traffic
capture (the proxy sees the address the app dialled); meshcore's proxies are reached explicitly, so both are
refused with that reason. :func:`validate_set` refuses a host two ServiceEntries declare, and any DNS-style host
of a VirtualService or DestinationRule that no ServiceEntry declares.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping, Sequence

from meshcore._addresses import is_ip
from meshcore.errors import FieldError
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import EXPORT_TO, first_owners, unique_names
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    INVALID,
    Context,
    Custom,
    Enum,
    Int,
    LabelKey,
    ListOf,
    MapOf,
    Obj,
    Path,
    Required,
    Schema,
    Str,
    StringMap,
    StrKey,
)

from .spec import DNS_ROUND_ROBIN, PROTOCOLS, STATIC, parse, spec_of

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "ServiceEntry"

CAPTURE = ("meshcore's proxies see no original destination (apps reach them on explicit local ports, there is no "
           "traffic capture on the VMs)")
RESOLUTION_NONE = (f"resolution NONE forwards to the address the app dialled, and {CAPTURE}; write resolution: DNS "
                   "(or STATIC with endpoints)")

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS = re.compile(rf"{_LABEL}(\.{_LABEL})+")


class ExternalHost(Schema):
    """A DNS name outside the mesh: lowercase labels, at least one dot, no wildcard."""

    expected = "a DNS name"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if value.startswith("*"):
            ctx.add(path, f"{json.dumps(value)}: wildcard hosts need resolution NONE, and {CAPTURE}; name each host")
            return INVALID
        if "." not in value:
            ctx.add(path, f"{json.dumps(value)}: a name without a dot is a Consul service in meshcore; a ServiceEntry "
                          "host is a DNS name outside the mesh such as api.example.com")
            return INVALID
        if not _DNS.fullmatch(value) or len(value) > 253:
            ctx.add(path, f"{json.dumps(value)} is not a DNS name (lowercase letters, digits, '-', labels joined by '.')")
            return INVALID
        return value


def _address_problem(value: str) -> str | None:
    if value.startswith("unix://"):
        return "unix domain socket endpoints are not supported; give an IP address or a DNS name"
    if is_ip(value) or (_DNS.fullmatch(value) or re.fullmatch(_LABEL, value)):
        return None
    return f"{json.dumps(value)} is neither an IP address nor a DNS name"


def _locality_problem(value: str) -> str | None:
    parts = value.split("/")
    if len(parts) > 3 or any(not p for p in parts):
        return f"{json.dumps(value)}: write region, region/zone or region/zone/subzone"
    return None


def _location_problem(value: str) -> str | None:
    if value == "MESH_INTERNAL":
        return ("MESH_INTERNAL declares workloads inside the mesh; in meshcore those are Consul services (register "
                "the workload in Consul and it gets mesh mTLS and identity); use MESH_EXTERNAL for a service outside")
    return None


PORT = Obj({
    "number": Required(Int(1, 65535)),
    "protocol": Required(Enum(*PROTOCOLS, any_case=True)),
    "name": Required(Str(min_len=1, max_len=63)),
    "targetPort": Int(1, 65535),
})

ENDPOINT = Obj(
    {
        "address": Required(Custom(Str(min_len=1), _address_problem)),
        "ports": MapOf(Int(1, 65535), key=StrKey(Str(min_len=1))),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "locality": Custom(Str(min_len=1), _locality_problem),
        "weight": Int(0, 2**31 - 1),
    },
    refused={
        "network": "endpoints on other networks are reached through mesh gateways between datacenters; declare "
                   "the endpoint's address as it is reachable from the calling VMs",
        "serviceAccount": "an identity for MESH_INTERNAL endpoints, which meshcore refuses (register the workload "
                          "in Consul)",
    },
)


def _unique_port_numbers(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[int, int] = {}
    for i, p in enumerate(cleaned.get("ports") or ()):
        if p["number"] in seen:
            ctx.add(path.field("ports").index(i).field("number"),
                    f"port {p['number']} is already declared at ports[{seen[p['number']]}]")
        else:
            seen[p["number"]] = i


def _endpoints_fit(cleaned: dict, path: Path, ctx: Context) -> None:
    resolution = cleaned.get("resolution")
    endpoints = cleaned.get("endpoints") or []
    names = {p["name"] for p in cleaned.get("ports") or ()}
    if resolution == STATIC and not endpoints:
        ctx.add(path.field("endpoints"), "resolution STATIC needs endpoints (their IP addresses)")
    if resolution == DNS_ROUND_ROBIN and (len(endpoints) > 1 or (not endpoints and len(cleaned.get("hosts") or ()) > 1)):
        ctx.add(path.field("resolution"), "DNS_ROUND_ROBIN resolves one name (one endpoint, or one host without "
                                          "endpoints); use DNS to balance over several")
    for i, e in enumerate(endpoints):
        at = path.field("endpoints").index(i)
        if resolution == STATIC and not is_ip(e["address"]):
            ctx.add(at.field("address"), f"resolution STATIC needs an IP address, got {json.dumps(e['address'])}; "
                                         "use resolution: DNS for names")
        for name in e.get("ports") or {}:
            if name not in names:
                ctx.add(at.field("ports").field(name), f"no port named {json.dumps(name)} in spec.ports "
                                                        f"(names: {', '.join(sorted(names)) or 'none'})")


def _resolution(value: str) -> str | None:
    return RESOLUTION_NONE if value == "NONE" else None


SPEC = Obj(
    {
        "hosts": Required(ListOf(ExternalHost(), min_items=1, unique=True)),
        "ports": Required(ListOf(PORT, min_items=1)),
        "resolution": Required(Custom(Enum("DNS", "DNS_ROUND_ROBIN", "STATIC", "NONE"), _resolution)),
        "location": Custom(Enum("MESH_EXTERNAL", "MESH_INTERNAL"), _location_problem),
        "endpoints": ListOf(ENDPOINT),
    },
    rules=[unique_names("ports", "port"), _unique_port_numbers, _endpoints_fit],
    refused={
        "addresses": f"virtual IPs work by traffic capture, and {CAPTURE}; reach the host through an upstream or a "
                     "Sidecar egress listener",
        "exportTo": EXPORT_TO.replace("every VirtualService and DestinationRule", "every ServiceEntry"),
        "workloadSelector": "selects Kubernetes WorkloadEntries; meshcore's workloads are Consul services (register "
                            "them in Consul)",
        "subjectAltNames": "verifies the mesh identity of MESH_INTERNAL endpoints, which meshcore refuses (register "
                           "the workload in Consul)",
    },
)

KIND = KindSpec.from_schema(
    API_VERSION, KIND_NAME, SPEC, spec_required=True, parse=parse,
    summary="a service outside the mesh (hosts, ports, DNS or STATIC endpoints) the proxies may reach",
)

# --- resolution (pure) ---------------------------------------------------------------------------------


_BY_HOST: dict[int, tuple[Sequence[Resource], dict[str, Resource]]] = {}


def entries_by_host(resources: Sequence[Resource]) -> dict[str, Resource]:
    """Every ServiceEntry host -> the ServiceEntry declaring it (the first by namespace and name). Computed once per
    snapshot's resource tuple (immutable), so a proxy's many lookups do not each sort every entry; callers must not
    change the answer."""
    hit = _BY_HOST.get(id(resources)) if isinstance(resources, tuple) else None
    if hit is not None and hit[0] is resources:
        return hit[1]
    out: dict[str, Resource] = {}
    for entry in sorted((r for r in resources if r.kind == KIND_NAME), key=lambda r: (r.namespace, r.name)):
        for host in spec_of(entry).hosts:
            out.setdefault(host, entry)
    if isinstance(resources, tuple):
        if len(_BY_HOST) >= 8:
            _BY_HOST.clear()
        _BY_HOST[id(resources)] = (resources, out)
    return out


def entry_for(resources: Sequence[Resource], host: str) -> Resource | None:
    """The ServiceEntry declaring ``host``, if any."""
    return entries_by_host(resources).get(host)


def _dns_hosts(r: Resource) -> Iterator[tuple[str, Any]]:
    """(field path, host) of every DNS-style host a VirtualService or DestinationRule names."""
    spec = r.spec or {}
    if r.kind == "DestinationRule":
        yield "spec.host", spec.get("host")
        return
    # The hosts of a VirtualService bound to gateways only are the names clients use at the edge
    # (bookinfo.example.com), not destinations; its routes' destinations still are.
    gateways = spec.get("gateways") or ["mesh"]
    for k, host in enumerate(spec.get("hosts") or () if "mesh" in gateways else ()):
        yield f"spec.hosts[{k}]", host
    from meshcore.policies.virtual_service.schema import destinations

    for path, dest in destinations(spec):
        yield f"{path}.host", dest.get("host")


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks: a host is declared by one ServiceEntry only, every DNS-style host of a
    VirtualService or DestinationRule (``api.example.com``: not a Consul service name) is a ServiceEntry's, and
    every DestinationRule ``tls`` fits its host (mesh service or ServiceEntry host: ``tls_origination.set_problems``)."""
    owner, errors = first_owners(resources, KIND_NAME, lambda host, o: (
        f"host {json.dumps(host)} is already declared by ServiceEntry {o.namespace}/{o.name}; declare each host once"))
    for r in resources:
        if r.kind not in ("VirtualService", "DestinationRule"):
            continue
        for path, host in _dns_hosts(r):
            if isinstance(host, str) and "." in host and host not in owner:
                errors.append(FieldError(str(r.key), None, path,
                                         f"{json.dumps(host)} is neither a Consul service nor a ServiceEntry host: "
                                         "hosts inside the mesh are Consul service names (reviews); for a service "
                                         f"outside, add a ServiceEntry with hosts: [{host}]"))
    errors += _tls_route_ports(resources, owner)
    from meshcore.policies.destination_rule.tls_origination import set_problems

    return errors + set_problems(resources)


def _tls_route_ports(resources: Sequence[Resource], owner: Mapping[str, Resource]) -> list[FieldError]:
    """A ``tls[]`` route passes the client's TLS through: its ``destination.port`` on a ServiceEntry host must be one
    of the entry's TLS or TCP ports (an HTTP port's server expects HTTP; a port the entry lacks is the VirtualService
    check's)."""
    from meshcore.policies.virtual_service.schema import destinations

    errors: list[FieldError] = []
    for r in sorted((r for r in resources if r.kind == "VirtualService"), key=lambda r: (r.namespace, r.name)):
        for path, dest in destinations(r.spec or {}):
            number, host = (dest.get("port") or {}).get("number"), dest.get("host")
            if not path.startswith("spec.tls[") or number is None or not isinstance(host, str) or host not in owner:
                continue
            entry = owner[host]
            port = spec_of(entry).port(number)
            if port is None or port.family != "http":
                continue
            others = ", ".join(str(p.number) for p in spec_of(entry).ports if p.family != "http") or "none"
            errors.append(FieldError(str(r.key), None, f"{path}.port.number",
                                     f"port {number} of {json.dumps(dest['host'])} is {port.protocol} in ServiceEntry "
                                     f"{entry.namespace}/{entry.name}, and a tls route passes the client's TLS through "
                                     f"as it is; route to one of its TLS or TCP ports ({others}), or route HTTP with "
                                     "http rules"))
    return errors


__all__ = ["API_VERSION", "KIND", "KIND_NAME", "SPEC", "ExternalHost", "entries_by_host", "entry_for", "validate_set"]
