"""VirtualService: how requests to a service are routed (spelled like Istio's).

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]                    # Consul service names; applies to every proxy that declared the upstream
  http:                               # ordered: the first rule whose match matches wins
  - name: jason
    match:                            # alternatives (OR); inside one, every condition (AND)
    - headers: {end-user: {exact: jason}}
      uri: {prefix: /reviews}         # exact | prefix | regex (RE2); also method, queryParams, ignoreUriCase
    route:
    - destination: {host: reviews, subset: v2}
  - route:                            # no match: everything else
    - destination: {host: reviews, subset: v1}
      weight: 90                      # relative proportions, as Istio's (need not sum to 100)
    - destination: {host: reviews, subset: v3}
      weight: 10
    timeout: 5s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,connect-failure", backoff: 25ms}  # or {baseInterval, maxInterval}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 1}}
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 5}
    headers:
      request: {set: {x-env: prod}, add: {x-trace: "1"}, remove: [x-debug]}
      response: {remove: [server]}
  tcp:                                # for services with meta protocol=tcp
  - route:
    - {destination: {host: db, subset: primary}, weight: 100}
```

As in Istio, a request no rule matches gets 404, and a fault or percentage left without
``percentage`` applies to every request. Every ``subset`` must exist in the DestinationRule of its
host; :func:`validate_set` checks that across resources (at apply time and in ``meshctl traffic``),
and the xDS build refuses a proxy's config while it does not hold (the proxy keeps its last good one).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Iterator, Mapping, Sequence

from meshcore.errors import FieldError
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    Deprecated,
    INVALID,
    Bool,
    Context,
    Custom,
    DNSLabel,
    Enum,
    Int,
    ListOf,
    MapOf,
    Obj,
    Path,
    Required,
    LabelKey,
    Schema,
    Str,
    StrKey,
    StringMap,
)

from meshcore.naming import dns_label_problem
from meshcore.policies.destination_rule import schema as dr
from meshcore.policies.gateway.schema import gateway_host_problem
from meshcore.policies.request_authentication.claims import claim_key_problem, is_claim_key
from meshcore.policies.virtual_service.cors import cors_policy_schema
from meshcore.resources.kinds._fields import (
    EXPORT_TO,
    UINT32_MAX,
    Dur,
    HeaderName,
    Number,
    ServiceHost,
    at_least_one,
    exactly_one,
    seconds,
)

from .spec import GRPC_STATUS_CODES, parse, spec_of

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "VirtualService"

RETRY_ON = (
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
)
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,503"
"""Istio's default when ``retries.retryOn`` is left out."""

_RE2_UNSUPPORTED = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]")


# --- value checks ----------------------------------------------------------------------------------------


def regex_problem(value: str) -> str | None:
    """Envoy matches with RE2: no lookaround, no backreferences; the rest must compile."""
    if _RE2_UNSUPPORTED.search(value):
        return f"{json.dumps(value)}: lookaround and backreferences are not supported (Envoy uses RE2)"
    try:
        re.compile(value)
    except re.error as exc:
        return f"{json.dumps(value)} is not a valid regular expression: {exc}"
    return None


def retry_on_problem(value: str) -> str | None:
    """``retryOn`` is a comma list of Envoy retry conditions and HTTP status codes (``5xx,503``)."""
    items = [v.strip() for v in value.split(",")]
    for item in items:
        if not item:
            return f"{json.dumps(value)}: empty item in the comma-separated list"
        if item.isdigit():
            if not 100 <= int(item) <= 599:
                return f"{json.dumps(item)} is not an HTTP status code (100-599)"
            continue
        if item not in RETRY_ON:
            return f"unknown retry condition {json.dumps(item)}; known: {', '.join(RETRY_ON)} or a status code"
    return None


def split_retry_on(value: str) -> tuple[str, list[int]]:
    """``"5xx,503"`` -> (``"5xx,retriable-status-codes"``, [503]): status codes need Envoy's retriable-status-codes."""
    conditions, codes = [], []
    for item in (v.strip() for v in value.split(",")):
        if item.isdigit():
            codes.append(int(item))
        elif item not in conditions:
            conditions.append(item)
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return ",".join(conditions), codes


def _path_problem(kind: str):
    def check(cleaned: dict) -> str | None:
        for key in ("exact", "prefix"):
            if key in cleaned and not cleaned[key].startswith("/"):
                return f"{kind}.{key} must start with '/', got {json.dumps(cleaned[key])}"
        return None

    return check


def string_match(what: str, presence: bool = False) -> Obj:
    """``exact | prefix | regex``; with ``presence`` (headers, query parameters) an empty ``{}`` is Istio's
    presence match: the header or parameter is there, whatever its value."""
    keys = ("exact", "prefix", "regex")

    def one(cleaned: dict, path: Path, ctx: Context) -> None:
        given = [k for k in keys if k in cleaned]
        if len(given) > 1 or (not given and not presence):
            got = f" (got {', '.join(given)})" if given else ""
            ctx.add(path, f"{what} must set exactly one of: {', '.join(keys)}{got}")

    return Obj({"exact": Str(), "prefix": Str(min_len=1), "regex": Custom(Str(min_len=1), regex_problem)},
               rules=[one])


URI_MATCH = Custom(string_match("uri"), _path_problem("uri"))
STRING_MATCH = string_match("a string match")
PRESENCE_MATCH = string_match("a string match", presence=True)


class _HeaderKey(StrKey):
    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        key = super().check(key, path, ctx)
        if key is INVALID:
            return INVALID
        return HeaderName(min_len=1).check(key, path, ctx)


class _MatchHeaderKey(_HeaderKey):
    """A header name, or Istio's ``@request.auth.claims.<claim>`` (a verified JWT's claim, at gateways)."""

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        if isinstance(key, str) and is_claim_key(key):
            problem = claim_key_problem(key)
            if problem:
                ctx.add(path, problem)
                return INVALID
            return key
        return super().check(key, path, ctx)


def _gateway_problem(value: str) -> str | None:
    if value == "mesh":
        return None
    ns, _, name = value.rpartition("/")
    if dns_label_problem(name) is None and (not ns or dns_label_problem(ns) is None):
        return None
    return (f"gateway {json.dumps(value)}: write mesh (the sidecars), a Gateway's name (in the VirtualService's "
            "namespace) or <namespace>/<name>")


GATEWAYS = ListOf(Custom(Str(min_len=1), _gateway_problem), min_items=1)
"""Istio's ``gateways``: ``mesh`` (the sidecars) and Gateways (``name`` or ``namespace/name``)."""

MATCH = Obj(
    {
        "name": Str(min_len=1),
        "uri": URI_MATCH,
        "method": STRING_MATCH,
        "authority": STRING_MATCH,
        "scheme": STRING_MATCH,
        "headers": MapOf(PRESENCE_MATCH, key=_MatchHeaderKey()),
        "withoutHeaders": MapOf(PRESENCE_MATCH, key=_MatchHeaderKey()),
        "queryParams": MapOf(PRESENCE_MATCH, key=StrKey(Str(min_len=1))),
        "ignoreUriCase": Bool(),
        "sourceLabels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "sourceNamespace": DNSLabel(),
        "gateways": GATEWAYS,
        "port": Int(1, 65535),
        "statPrefix": Str(min_len=1, max_len=255),
    }
)
"""One ``match[]`` alternative. ``sourceLabels`` / ``sourceNamespace`` select the calling workloads (the proxy whose
routes are built): on other callers' proxies the alternative is left out, as Istio does. ``port`` is the port of the
listener the request came in on (a sidecar's upstream ``local_bind_port``, a Gateway server's port, a Sidecar
egress listener's port) or, on a sidecar, the port of the host addressed (Istio's service port): on other listeners
the alternative is left out. ``statPrefix`` is the Envoy route's
``stat_prefix`` (``vhost.<virtual host>.route.<statPrefix>.*`` stats)."""

PORT_SELECTOR = Obj({"number": Required(Int(1, 65535))})
"""``destination.port``: which port of the host (a Consul service's instances' registered port, a ServiceEntry port)."""

DESTINATION = Obj({"host": Required(ServiceHost(external=True)), "subset": DNSLabel(), "port": PORT_SELECTOR})

MAX_WEIGHT = 2**31 - 1  # Istio's int32

ROUTE_DESTINATION = Obj({"destination": Required(DESTINATION), "weight": Int(0, MAX_WEIGHT)})


def _weights(cleaned: list, path: Path, ctx: Context) -> None:
    """Istio's rule: weights are relative proportions (``1`` and ``3`` send a quarter and three quarters; they
    need not sum to 100). A single destination takes everything whatever its weight; among several, a missing
    weight is 0 (Istio's default) and at least one must be above 0."""
    if len(cleaned) < 2:
        return
    total = sum(d.get("weight") or 0 for d in cleaned)
    if not total:
        ctx.add(path, "at least one destination needs a weight above 0 (a missing weight is 0 when a route has "
                      "several destinations)")
    elif total > UINT32_MAX:
        ctx.add(path, f"the weights sum to {total}, more than Envoy's limit {UINT32_MAX}; scale them down")


class Destinations(ListOf):
    """``route[]``: destinations with weights checked together, reported at ``route`` or ``route[i].weight``."""

    def __init__(self, item: Schema | None = None) -> None:
        super().__init__(item or ROUTE_DESTINATION, min_items=1)

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        before = len(ctx.issues)
        cleaned = super().check(value, path, ctx)
        if cleaned is INVALID or len(ctx.issues) != before:
            return INVALID
        _weights(cleaned, path, ctx)
        return cleaned if len(ctx.issues) == before else INVALID


def _backoff_order(cleaned: dict, path: Path, ctx: Context) -> None:
    if "maxInterval" in cleaned and seconds(cleaned["maxInterval"]) < seconds(cleaned["baseInterval"]):
        ctx.add(path.field("maxInterval"),
                f"must not be shorter than baseInterval ({cleaned['baseInterval']}), got {cleaned['maxInterval']}")


BACKOFF_BLOCK = Obj({"baseInterval": Required(Dur(min_s=0.001)), "maxInterval": Dur(min_s=0.001)},
                    rules=[_backoff_order])


class _Backoff(Schema):
    """Istio's ``backoff: 25ms`` (the base interval; Envoy's maximum is then ten times it) or meshcore's mapping
    ``{baseInterval, maxInterval}``; the cleaned value is always the mapping."""

    expected = 'a duration such as "25ms", or a mapping {baseInterval, maxInterval}'

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, str):
            cleaned = Dur(min_s=0.001).check(value, path, ctx)
            return INVALID if cleaned is INVALID else {"baseInterval": cleaned}
        if isinstance(value, Mapping):
            return BACKOFF_BLOCK.check(value, path, ctx)
        return self._wrong_type(value, path, ctx)


BACKOFF = _Backoff()

RETRIES = Obj(
    {
        "attempts": Required(Int(0, 100)),
        "perTryTimeout": Dur(min_s=0.001),
        "retryOn": Custom(Str(min_len=1), retry_on_problem),
        "backoff": BACKOFF,
        "retryIgnorePreviousHosts": Bool(),
        "retryRemoteLocalities": Bool(),
    }
)

PERCENTAGE = Obj({"value": Required(Number(0, 100))})

GRPC_STATUS = tuple(GRPC_STATUS_CODES)
"""Istio's ``abort.grpcStatus`` values: the gRPC status names (``UNAVAILABLE``)."""

FAULT = Obj(
    {
        # percent: Istio's deprecated integer percentage, still honoured by Istio (its bookinfo fault samples use it)
        "delay": Obj({"fixedDelay": Required(Dur(min_s=0.001)), "percentage": PERCENTAGE, "percent": Int(0, 100)},
                     refused={"exponentialDelay": "not implemented by Istio either; use fixedDelay"}),
        "abort": Obj({"httpStatus": Int(200, 599), "grpcStatus": Enum(*GRPC_STATUS), "percentage": PERCENTAGE},
                     rules=[exactly_one(("httpStatus", "grpcStatus"), "abort")],
                     refused={"http2Error": "not implemented by Istio either (its API marks http2Error NOT "
                                            "IMPLEMENTED); abort with httpStatus or grpcStatus"}),
    },
    rules=[at_least_one(("delay", "abort"), "fault")],
)

HEADER_OPERATIONS = Obj(
    {
        "set": MapOf(Str(), key=_HeaderKey()),
        "add": MapOf(Str(), key=_HeaderKey()),
        "remove": ListOf(HeaderName(min_len=1)),
    }
)

HEADERS = Obj({"request": HEADER_OPERATIONS, "response": HEADER_OPERATIONS})

HTTP_ROUTE_DESTINATION = Obj({"destination": Required(DESTINATION), "weight": Int(0, MAX_WEIGHT), "headers": HEADERS})
"""An http rule's destination: Istio's per-destination ``headers`` are applied only to requests sent there."""


def _mirror_percentage_needs_mirror(cleaned: dict, path: Path, ctx: Context) -> None:
    if "mirrorPercentage" in cleaned and "mirror" not in cleaned:
        ctx.add(path.field("mirrorPercentage"), "needs mirror (the destination that receives the copies)")
    if "mirror" in cleaned and "mirrors" in cleaned:
        ctx.add(path.field("mirrors"), "give mirror or mirrors, not both (mirrors: [{destination, percentage}] "
                                       "replaces mirror and mirrorPercentage)")


def _one_action(cleaned: dict, path: Path, ctx: Context) -> None:
    """As Istio: a rule routes, redirects or answers directly; rewrite goes with route only."""
    given = [k for k in ("route", "redirect", "directResponse", "delegate") if k in cleaned]
    if len(given) != 1:
        ctx.add(path, "an http rule needs exactly one of route, redirect, directResponse, delegate"
                      + (f" (got {', '.join(given)})" if given else ""))
        return
    if given[0] == "delegate":
        return  # the delegate's routes inherit what they leave unset (rewrite, timeout, retries, ...), as Istio's
    if "rewrite" in cleaned and "route" not in cleaned:
        ctx.add(path.field("rewrite"), f"rewrite applies to a route, not to {given[0]}")
    for field in ("mirror", "mirrors", "retries", "timeout"):
        if field in cleaned and "route" not in cleaned:
            ctx.add(path.field(field), f"{field} applies to a route, not to {given[0]}")


REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                  308: "PERMANENT_REDIRECT"}


def _redirect_code(value: int) -> str | None:
    return None if value in REDIRECT_CODES else f"must be one of {', '.join(map(str, REDIRECT_CODES))} (got {value})"


def _redirect_path(cleaned: dict, path: Path, ctx: Context) -> None:
    if "uri" in cleaned and "prefixRewrite" in cleaned:
        ctx.add(path, "redirect takes uri (the whole path) or prefixRewrite (the matched prefix), not both")
    if "port" in cleaned and "derivePort" in cleaned:
        ctx.add(path.field("derivePort"), "redirect takes port or derivePort, not both")


DERIVE_PORT = ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")
"""Istio's ``redirect.derivePort``: the scheme's default port (Envoy's own behaviour), or the port of the listener
the request came in on."""


REDIRECT = Obj(
    {
        "uri": Str(min_len=1),
        "prefixRewrite": Str(),
        "authority": Str(min_len=1),
        "port": Int(1, 65535),
        "derivePort": Enum(*DERIVE_PORT),
        "scheme": Str(min_len=1, pattern=r"[a-z][a-z0-9+.-]*", pattern_hint="must be a URI scheme such as https"),
        "redirectCode": Custom(Int(300, 399), _redirect_code),
    },
    rules=[_redirect_path],
)

def _one_rewrite(cleaned: dict, path: Path, ctx: Context) -> None:
    if "uri" in cleaned and "uriRegexRewrite" in cleaned:
        ctx.add(path, "rewrite takes uri or uriRegexRewrite, not both")


REWRITE = Obj(
    {
        "uri": Str(min_len=1),
        "authority": Str(min_len=1),
        "uriRegexRewrite": Obj({"match": Required(Custom(Str(min_len=1), regex_problem)), "rewrite": Required(Str())}),
    },
    rules=[_one_rewrite],
)

def _base64_problem(value: str) -> str | None:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return "must be base64 (Istio's bytes); for text write body.string"
    return None


DIRECT_RESPONSE = Obj(
    {
        "status": Required(Int(200, 599)),
        "body": Obj({"string": Str(), "bytes": Custom(Str(), _base64_problem)},
                    rules=[exactly_one(("string", "bytes"), "body")]),
    }
)

MIRROR = Obj({"destination": Required(DESTINATION), "percentage": PERCENTAGE})


HTTP_ROUTE = Obj(
    {
        "name": Str(min_len=1),
        "match": ListOf(MATCH),
        "route": Destinations(HTTP_ROUTE_DESTINATION),
        "redirect": REDIRECT,
        "directResponse": DIRECT_RESPONSE,
        "rewrite": REWRITE,
        "timeout": Dur(),
        "retries": RETRIES,
        "fault": FAULT,
        "mirror": DESTINATION,
        "mirrors": ListOf(MIRROR, min_items=1),
        "mirrorPercentage": PERCENTAGE,
        "headers": HEADERS,
        "corsPolicy": cors_policy_schema(STRING_MATCH),
        "delegate": Obj({"name": Required(DNSLabel()), "namespace": DNSLabel()}),
    },
    rules=[_mirror_percentage_needs_mirror, _one_action],
    deprecated={f: Deprecated("mirrorPercentage", convert=lambda n: {"value": n},
                              why="deprecated in Istio (an integer percent)")
                for f in ("mirrorPercent", "mirror_percent")},
)

TCP_MATCH = Obj(
    {
        "port": Int(1, 65535),
        "sourceLabels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "sourceNamespace": DNSLabel(),
        "gateways": GATEWAYS,
    },
    refused={
        "destinationSubnets": "matches the address the app dialled, which meshcore's proxies never see (apps "
                              "connect to explicit local ports); route by the upstream (one listener per upstream)",
        "sourceSubnet": "matches the caller's address, which on a sidecar's outbound listener is always the local app "
                        "(loopback); select callers with sourceLabels or sourceNamespace",
    },
)
"""One ``tcp[].match[]`` alternative: the listener port and the calling workloads, decided when the proxy's config is
built (each outbound listener binds one port and serves one caller), so the first tcp rule that applies is the
listener's tcp_proxy."""

TCP_ROUTE = Obj({"match": ListOf(TCP_MATCH), "route": Required(Destinations())})

_SNI = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _sni_problem(value: str) -> str | None:
    if _SNI.fullmatch(value):
        return None
    return f"{json.dumps(value)} is not a TLS server name (a lowercase DNS name, or *.<domain>)"


TLS_MATCH = Obj(
    {
        "sniHosts": Required(ListOf(Custom(Str(min_len=1), _sni_problem), min_items=1, unique=True)),
        "port": Int(1, 65535),
        "sourceLabels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "sourceNamespace": DNSLabel(),
        "gateways": GATEWAYS,
    },
    refused={"destinationSubnets": "matches the address the app dialled, which meshcore's proxies never see (apps "
                                   "connect to explicit local ports); match by sniHosts"},
)

TLS_DESTINATION = DESTINATION

TLS_ROUTE = Obj({
    "match": Required(ListOf(TLS_MATCH, min_items=1)),
    "route": Required(Destinations(Obj({"destination": Required(TLS_DESTINATION), "weight": Int(0, MAX_WEIGHT)}))),
})
"""Istio's ``tls[]`` rule: passthrough TLS routed by SNI (on a TLS or TCP upstream, or a Sidecar's TLS egress
listener)."""


def _sni_in_hosts(cleaned: dict, path: Path, ctx: Context) -> None:
    """As Istio: every ``sniHosts`` entry is one of the VirtualService's hosts (a wildcard covers at least one)."""
    hosts = cleaned.get("hosts") or ()
    for i, rule in enumerate(cleaned.get("tls") or ()):
        for j, m in enumerate(rule.get("match") or ()):
            for k, sni in enumerate(m.get("sniHosts") or ()):
                covered = sni in hosts or (sni.startswith("*.") and any(h.endswith(sni[1:]) for h in hosts)) or any(
                    h == "*" or h.startswith("*.") and sni.endswith(h[1:]) for h in hosts)  # a wildcard host covers it
                if not covered:
                    ctx.add(path.field("tls").index(i).field("match").index(j).field("sniHosts").index(k),
                            f"{json.dumps(sni)} is not among spec.hosts ({', '.join(hosts)}); a tls rule routes "
                            "the VirtualService's own hosts")


def _mesh_hosts_are_services(cleaned: dict, path: Path, ctx: Context) -> None:
    """Hosts of a VirtualService for the sidecars (``mesh``, the default) are Consul service names; one bound to
    Gateways only may route external names (``bookinfo.example.com``, ``*.example.com``)."""
    if "mesh" not in (cleaned.get("gateways") or ["mesh"]):
        return
    for i, rule in enumerate(cleaned.get("http") or ()):
        for j, m in enumerate(rule.get("match") or ()):
            for field in ("headers", "withoutHeaders"):
                for key in m.get(field) or {}:
                    if is_claim_key(key) and "mesh" in (m.get("gateways") or ["mesh"]):
                        ctx.add(path.field("http").index(i).field("match").index(j).field(field).key(key),
                                "claims are matched at ingress gateways (RequestAuthentication verifies the token "
                                "there); bind this VirtualService (or the match) to a Gateway, or match the claim in "
                                "an AuthorizationPolicy (request.auth.claims[...]) on the workload")
    hosts = cleaned.get("hosts") or []
    for i, host in enumerate(hosts):
        read = ServiceHost(external=True).check(host, path.field("hosts").index(i), ctx)
        if isinstance(read, str):
            hosts[i] = read  # reviews.default.svc.cluster.local: reviews


def _routes_given(cleaned: dict, path: Path, ctx: Context) -> None:
    if not cleaned.get("http") and not cleaned.get("tcp") and not cleaned.get("tls"):
        ctx.add(path, "a VirtualService needs http, tls or tcp routes")


def _delegate_shape(cleaned: dict, path: Path, ctx: Context) -> None:
    """As Istio: a VirtualService without ``hosts`` is a delegate, used only through another's ``http[].delegate``:
    it has http rules only and no ``gateways`` (the root's apply)."""
    if cleaned.get("hosts"):
        return
    for field in ("tcp", "tls", "gateways"):
        if cleaned.get(field):
            ctx.add(path.field(field), f"a delegate VirtualService (one without hosts) has no {field}: "
                                       "only http rules are delegated; give it hosts to route on its own")


SPEC = Obj(
    {
        "hosts": ListOf(Custom(Str(min_len=1), gateway_host_problem), unique=True),
        "http": ListOf(HTTP_ROUTE),
        "tcp": ListOf(TCP_ROUTE),
        "tls": ListOf(TLS_ROUTE),
        "gateways": GATEWAYS,
    },
    rules=[_routes_given, _delegate_shape, _mesh_hosts_are_services, _sni_in_hosts],
    refused={"exportTo": EXPORT_TO},
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    parse=parse,
    summary="ordered HTTP routes (match, weighted subsets, retries, timeout, fault, mirror, headers) and weighted TCP",
)


# --- resolution (pure) ---------------------------------------------------------------------------------


def service_for(resources: Sequence[Resource], host: str) -> Resource | None:
    """The VirtualService routing ``host`` for the sidecars: the first by (namespace, name) listing it in
    ``spec.hosts`` whose ``gateways`` include ``mesh`` (the default)."""
    for r in sorted((r for r in resources if r.kind == KIND_NAME), key=lambda r: (r.namespace, r.name)):
        if host in spec_of(r).hosts and "mesh" in spec_of(r).gateways:
            return r
    return None


def destinations(spec: dict) -> Iterator[tuple[str, dict]]:
    """Every destination a VirtualService names, with its field path (routes and mirrors)."""
    for i, rule in enumerate(spec.get("http") or ()):
        for j, d in enumerate(rule.get("route") or ()):
            yield f"spec.http[{i}].route[{j}].destination", d["destination"]
        if rule.get("mirror"):
            yield f"spec.http[{i}].mirror", rule["mirror"]
        for j, m in enumerate(rule.get("mirrors") or ()):
            yield f"spec.http[{i}].mirrors[{j}].destination", m["destination"]
    for proto in ("tcp", "tls"):
        for i, rule in enumerate(spec.get(proto) or ()):
            for j, d in enumerate(rule.get("route") or ()):
                yield f"spec.{proto}[{i}].route[{j}].destination", d["destination"]


def subset_problem(resources: Sequence[Resource], host: str, subset: str) -> str | None:
    """Why ``subset`` of ``host`` cannot be routed to (no DestinationRule, or not among its subsets), or None."""
    rule = dr.rule_for(resources, host)
    if rule is None:
        return (f"subset {json.dumps(subset)} of host {json.dumps(host)} is not defined: no DestinationRule has "
                f"host {json.dumps(host)}; add one with subsets: [{{name: {subset}, labels: {{version: {subset}}}}}]")
    if dr.spec_of(rule).subset(subset) is None:
        known = ", ".join(dr.subset_names(rule)) or "none"
        return (f"subset {json.dumps(subset)} is not defined in DestinationRule {rule.namespace}/{rule.name} "
                f"for host {json.dumps(host)} (its subsets: {known})")
    return None


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks over everything that will be stored together.

    * every ``destination.subset`` (routes and mirrors) exists in the DestinationRule of its host;
    * every ``destination.port`` of a ServiceEntry host is one of the entry's ports (a Consul service's ports are
      the catalog's: checked when the proxies' config is built);
    * a host is routed by one VirtualService only (a second one would be silently ignored);
    * every ``http[].delegate`` names a VirtualService without hosts, and no chain of delegates is a cycle.
    """
    from meshcore.policies.service_entry import schema as se
    from meshcore.policies.service_entry.spec import spec_of as entry_spec

    from .delegation import delegate_errors

    errors: list[FieldError] = []
    owner: dict[str, Resource] = {}  # hosts for the sidecars only: a Gateway-bound VirtualService may share a host
    for r in sorted((r for r in resources if r.kind == KIND_NAME), key=lambda r: (r.namespace, r.name)):
        spec = r.spec or {}
        mesh_hosts = (spec.get("hosts") or []) if "mesh" in (spec.get("gateways") or ["mesh"]) else []
        for k, host in enumerate(mesh_hosts):
            if host in owner:
                o = owner[host]
                errors.append(FieldError(str(r.key), None, f"spec.hosts[{k}]",
                                         f"host {json.dumps(host)} is already routed by VirtualService "
                                         f"{o.namespace}/{o.name}; put all routes of a host in one VirtualService"))
            else:
                owner[host] = r
        for path, dest in destinations(spec):
            number = (dest.get("port") or {}).get("number")
            entry = se.entry_for(resources, dest["host"]) if number is not None else None
            if entry is not None and entry_spec(entry).port(number) is None:
                known = ", ".join(str(p.number) for p in entry_spec(entry).ports)
                errors.append(FieldError(str(r.key), None, f"{path}.port.number",
                                         f"ServiceEntry {entry.namespace}/{entry.name} declares no port {number} for "
                                         f"host {json.dumps(dest['host'])} (its ports: {known})"))
            if dest.get("subset"):
                problem = subset_problem(resources, dest["host"], dest["subset"])
                if problem:
                    errors.append(FieldError(str(r.key), None, f"{path}.subset", problem))
    return errors + delegate_errors(resources)


__all__ = [
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "RETRY_ON",
    "DEFAULT_RETRY_ON",
    "destinations",
    "regex_problem",
    "retry_on_problem",
    "service_for",
    "split_retry_on",
    "subset_problem",
    "validate_set",
]
