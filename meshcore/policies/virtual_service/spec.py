"""VirtualService's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into a :class:`VirtualServiceSpec`; durations
become seconds, percentages floats (an omitted ``percentage`` is 100, as in Istio), an omitted weight 100 (the
schema allows that only for a single destination), map entries sorted ``(key, value)`` pairs. The plugin and
its route compiler (:mod:`.routes`) read only these types.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

from meshcore.resources.kinds._fields import seconds
from meshcore.resources.model import Resource

from .cors import CorsPolicy, parse_cors

EXACT, PREFIX, REGEX, PRESENT = "exact", "prefix", "regex", "present"
MESH = "mesh"
"""Istio's reserved gateway name for the sidecars."""


@dataclass(frozen=True)
class StringMatch:
    kind: str  # EXACT | PREFIX | REGEX (the schema requires exactly one); PRESENT: Istio's ``{}`` (headers, params)
    value: str


def _from_caller(source_labels: tuple[tuple[str, str], ...], source_namespace: str | None,
                 labels: Mapping[str, str], namespace: str) -> bool:
    """A match alternative's caller scope (``sourceLabels``, ``sourceNamespace``) holds for a caller with ``labels``
    in ``namespace``."""
    if source_namespace is not None and source_namespace != namespace:
        return False
    return all(labels.get(k) == v for k, v in source_labels)


@dataclass(frozen=True)
class Match:
    """One ``match[]`` alternative: every condition in it must hold. ``uri`` None: any path."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # by header name
    query_params: tuple[tuple[str, StringMatch], ...] = ()  # by parameter name
    ignore_uri_case: bool = False
    name: str | None = None  # Istio's match name: appended to the Envoy route name (``<http name>.<match name>``)
    authority: StringMatch | None = None
    scheme: StringMatch | None = None
    without_headers: tuple[tuple[str, StringMatch], ...] = ()  # by header name: must not match
    source_labels: tuple[tuple[str, str], ...] = ()  # the caller's labels (all must hold)
    gateways: tuple[str, ...] = ()  # Istio's match gateways as written ("mesh", "<name>", "<ns>/<name>"); empty: all
    source_namespace: str | None = None  # the caller's namespace
    port: int | None = None  # the port of the listener the request came in on
    stat_prefix: str | None = None  # the Envoy route's stat_prefix

    def from_caller(self, labels: Mapping[str, str], namespace: str) -> bool:
        """Whether this alternative applies on the proxy of a caller with ``labels`` in ``namespace``."""
        return _from_caller(self.source_labels, self.source_namespace, labels, namespace)

    def on_listener(self, ports: "ListenerPorts") -> bool:
        """Whether this alternative applies on a listener of ``ports``."""
        return ports.admits(self.port)


@dataclass
class ListenerPorts:
    """What a match ``port`` may name on one listener: the listener's own port (``port``; None: not known, any) or,
    on a sidecar, the port of the host it serves (Istio's reading: the service port), asked of ``host_ports`` only
    when a match names another port (it reads the catalog)."""

    port: int | None = None
    host_ports: "Callable[[], Collection[int]] | None" = None
    _known: frozenset[int] | None = None

    def admits(self, number: int | None) -> bool:
        if number is None or self.port is None or number == self.port:
            return True
        if self.host_ports is None:
            return False
        if self._known is None:
            self._known = frozenset(self.host_ports())
        return number in self._known


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None  # destination.port.number: which port of the host (None: the upstream's own)


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    weight: int = 100
    request_headers: "HeaderOperations | None" = None  # per destination (http rules only)
    response_headers: "HeaderOperations | None" = None


@dataclass(frozen=True)
class Retries:
    attempts: int  # 0: retries off
    per_try_timeout: float | None = None  # seconds
    retry_on: str | None = None  # None: DEFAULT_RETRY_ON
    backoff_base_interval: float | None = None  # seconds; None: no backoff block
    backoff_max_interval: float | None = None  # seconds
    ignore_previous_hosts: bool = True  # Istio's retryIgnorePreviousHosts: each retry goes to another host
    remote_localities: bool = False  # Istio's retryRemoteLocalities: retries may leave the failed priority


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay: float  # seconds
    percentage: float = 100.0


@dataclass(frozen=True)
class FaultAbort:
    http_status: int | None  # exactly one of http_status and grpc_status (the schema's rule)
    percentage: float = 100.0
    grpc_status: int | None = None  # the gRPC status code (grpcStatus: UNAVAILABLE -> 14)


@dataclass(frozen=True)
class Fault:
    """At least one of ``delay`` and ``abort`` is set (the schema's rule)."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True)
class HeaderOperations:
    set: tuple[tuple[str, str], ...] = ()  # by header name
    add: tuple[tuple[str, str], ...] = ()  # by header name
    remove: tuple[str, ...] = ()  # as written


@dataclass(frozen=True)
class Redirect:
    uri: str | None = None  # the whole path
    prefix_rewrite: str | None = None  # replaces the matched prefix
    authority: str | None = None
    port: int | None = None
    scheme: str | None = None
    code: int = 301  # Istio's default
    derive_port: str | None = None  # FROM_PROTOCOL_DEFAULT | FROM_REQUEST_PORT (the listener's port)


@dataclass(frozen=True)
class Rewrite:
    uri: str | None = None  # replaces the matched prefix (Envoy prefix_rewrite), as Istio
    authority: str | None = None
    regex_match: str | None = None
    regex_rewrite: str | None = None


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: str | None = None  # body.string
    body_bytes: bytes | None = None  # body.bytes, decoded from base64


@dataclass(frozen=True)
class Mirror:
    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True)
class HttpRoute:
    route: tuple[RouteDestination, ...]  # empty with redirect or direct_response
    name: str | None = None
    match: tuple[Match, ...] = ()  # empty: every request
    timeout: float | None = None  # seconds; None: the generator's default
    retries: Retries | None = None
    fault: Fault | None = None
    mirror: Destination | None = None
    mirror_percentage: float = 100.0
    request_headers: HeaderOperations = HeaderOperations()
    response_headers: HeaderOperations = HeaderOperations()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    direct_response: DirectResponse | None = None
    mirrors: tuple[Mirror, ...] = ()  # mirror + mirrorPercentage come here too (one entry)
    cors: CorsPolicy | None = None
    delegate: "Delegate | None" = None  # the rule's routes are the delegate VirtualService's (:mod:`.delegation`)


@dataclass(frozen=True)
class Delegate:
    """``http[].delegate``: the VirtualService whose http rules stand in for this rule (namespace None: the root's)."""

    name: str
    namespace: str | None = None

    def key(self, root_namespace: str) -> tuple[str, str]:
        return (self.namespace or root_namespace, self.name)


@dataclass(frozen=True)
class TcpMatch:
    """One ``tcp[].match[]`` alternative: the listener port and the calling workloads (all must hold)."""

    port: int | None = None
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()  # as written; empty: wherever the VirtualService applies

    def from_caller(self, labels: Mapping[str, str], namespace: str) -> bool:
        return _from_caller(self.source_labels, self.source_namespace, labels, namespace)


@dataclass(frozen=True)
class TcpRoute:
    route: tuple[RouteDestination, ...]
    match: tuple[TcpMatch, ...] = ()  # empty: every connection


@dataclass(frozen=True)
class TlsMatch:
    """One ``tls[].match[]`` alternative: the SNI names (exact or ``*.<domain>``), optionally the listener port and
    the calling workloads."""

    sni_hosts: tuple[str, ...]
    port: int | None = None
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()  # as written; empty: wherever the VirtualService applies

    def from_caller(self, labels: Mapping[str, str], namespace: str) -> bool:
        return _from_caller(self.source_labels, self.source_namespace, labels, namespace)


@dataclass(frozen=True)
class TlsRoute:
    """Istio's ``tls[]`` rule: TLS passed through (never terminated), routed by the ClientHello's SNI."""

    match: tuple[TlsMatch, ...]
    route: tuple[RouteDestination, ...]


@dataclass(frozen=True)
class VirtualServiceSpec:
    hosts: tuple[str, ...]
    http: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()
    gateways: tuple[str, ...] = (MESH,)  # where it applies: "mesh" (the sidecars) and/or Gateways, as written
    tls: tuple[TlsRoute, ...] = ()

    @property
    def has_fault(self) -> bool:
        return any(rule.fault is not None for rule in self.http)

    @property
    def is_delegate(self) -> bool:
        """Istio's reading: a VirtualService without hosts is a delegate, routed only through another's rules."""
        return not self.hosts


def _string_match(m: Mapping[str, Any]) -> StringMatch:
    kind = next((k for k in (EXACT, PREFIX, REGEX) if k in m), None)
    return StringMatch(PRESENT, "") if kind is None else StringMatch(kind, m[kind])


def _string_matches(entries: Mapping[str, Any] | None) -> tuple[tuple[str, StringMatch], ...]:
    return tuple((name, _string_match(m)) for name, m in sorted((entries or {}).items()))


def _match(m: Mapping[str, Any]) -> Match:
    return Match(
        uri=_string_match(m["uri"]) if m.get("uri") else None,
        method=_string_match(m["method"]) if m.get("method") else None,
        headers=_string_matches(m.get("headers")),
        query_params=_string_matches(m.get("queryParams")),
        ignore_uri_case=bool(m.get("ignoreUriCase")),
        name=m.get("name"),
        authority=_string_match(m["authority"]) if m.get("authority") else None,
        scheme=_string_match(m["scheme"]) if m.get("scheme") else None,
        without_headers=_string_matches(m.get("withoutHeaders")),
        source_labels=tuple(sorted((m.get("sourceLabels") or {}).items())),
        source_namespace=m.get("sourceNamespace"),
        gateways=tuple(m.get("gateways") or ()),
        port=m.get("port"),
        stat_prefix=m.get("statPrefix"),
    )


def _destination(d: Mapping[str, Any]) -> Destination:
    return Destination(d["host"], d.get("subset"), (d.get("port") or {}).get("number"))


def _route(destinations: Any) -> tuple[RouteDestination, ...]:
    """A single destination takes everything (its weight, if any, is ignored, as Istio does); among several a
    missing weight is 0; weights are relative, Envoy divides by their sum."""
    destinations = list(destinations or ())

    def one(d: Mapping[str, Any], weight: int) -> RouteDestination:
        headers = d.get("headers")
        if not headers:
            return RouteDestination(_destination(d["destination"]), weight)
        return RouteDestination(_destination(d["destination"]), weight,
                                _header_operations(headers.get("request")), _header_operations(headers.get("response")))

    if len(destinations) == 1:
        return (one(destinations[0], 100),)
    return tuple(one(d, d.get("weight") or 0) for d in destinations)


def _percent(block: Mapping[str, Any] | None) -> float:
    """``percentage.value``; else Istio's deprecated integer ``percent`` (delay only); else 100. As Istio, the
    percentage wins when both are written."""
    block = block or {}
    if block.get("percentage"):
        return float(block["percentage"].get("value", 100))
    return float(block.get("percent", 100))


def _retries(r: Mapping[str, Any] | None) -> Retries | None:
    if not r:
        return None
    backoff = r.get("backoff") or None
    return Retries(
        attempts=r["attempts"],
        per_try_timeout=seconds(r["perTryTimeout"]) if "perTryTimeout" in r else None,
        retry_on=r.get("retryOn") or None,
        backoff_base_interval=seconds(backoff["baseInterval"]) if backoff else None,
        backoff_max_interval=seconds(backoff["maxInterval"]) if backoff and "maxInterval" in backoff else None,
        ignore_previous_hosts=r.get("retryIgnorePreviousHosts", True),
        remote_localities=r.get("retryRemoteLocalities", False),
    )


def _fault(f: Mapping[str, Any] | None) -> Fault | None:
    if not f:
        return None
    delay, abort = f.get("delay"), f.get("abort")
    return Fault(
        delay=None if delay is None else FaultDelay(seconds(delay["fixedDelay"]), _percent(delay)),
        abort=None if abort is None else FaultAbort(abort.get("httpStatus"), _percent(abort),
                                                    _grpc_code(abort.get("grpcStatus"))),
    )


GRPC_STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
"""gRPC's status codes by name (the gRPC spec's table, as grpcio's ``StatusCode`` spells it; a test checks they agree).
Written out: generation is pure and loads no network client."""


def _grpc_code(name: str | None) -> int | None:
    """``UNAVAILABLE`` -> 14."""
    return None if name is None else GRPC_STATUS_CODES[name]


def _header_operations(ops: Mapping[str, Any] | None) -> HeaderOperations:
    ops = ops or {}
    return HeaderOperations(
        set=tuple(sorted((ops.get("set") or {}).items())),
        add=tuple(sorted((ops.get("add") or {}).items())),
        remove=tuple(ops.get("remove") or ()),
    )


def _redirect(r: Mapping[str, Any] | None) -> Redirect | None:
    if r is None:
        return None
    return Redirect(uri=r.get("uri"), prefix_rewrite=r.get("prefixRewrite"), authority=r.get("authority"),
                    port=r.get("port"), scheme=r.get("scheme"), code=r.get("redirectCode", 301),
                    derive_port=r.get("derivePort"))


def _rewrite(r: Mapping[str, Any] | None) -> Rewrite | None:
    if r is None:
        return None
    regex = r.get("uriRegexRewrite") or {}
    return Rewrite(uri=r.get("uri"), authority=r.get("authority"), regex_match=regex.get("match"),
                   regex_rewrite=regex.get("rewrite"))


def _direct(d: Mapping[str, Any] | None) -> DirectResponse | None:
    if d is None:
        return None
    body = d.get("body") or {}
    raw = body.get("bytes")
    return DirectResponse(status=d["status"], body=body.get("string"),
                          body_bytes=None if raw is None else base64.b64decode(raw, validate=True))


def _mirrors(rule: Mapping[str, Any]) -> tuple[Mirror, ...]:
    if rule.get("mirror"):
        return (Mirror(_destination(rule["mirror"]), float((rule.get("mirrorPercentage") or {}).get("value", 100))),)
    return tuple(Mirror(_destination(m["destination"]), _percent(m)) for m in rule.get("mirrors") or ())


def _http_route(rule: Mapping[str, Any]) -> HttpRoute:
    headers = rule.get("headers") or {}
    mirror = rule.get("mirror")
    return HttpRoute(
        route=_route(rule.get("route")),
        redirect=_redirect(rule.get("redirect")),
        rewrite=_rewrite(rule.get("rewrite")),
        direct_response=_direct(rule.get("directResponse")),
        mirrors=_mirrors(rule),
        name=rule.get("name"),
        match=tuple(_match(m) for m in rule.get("match") or ()),
        timeout=seconds(rule["timeout"]) if "timeout" in rule else None,
        retries=_retries(rule.get("retries")),
        fault=_fault(rule.get("fault")),
        mirror=_destination(mirror) if mirror else None,
        mirror_percentage=float((rule.get("mirrorPercentage") or {}).get("value", 100)),
        request_headers=_header_operations(headers.get("request")),
        response_headers=_header_operations(headers.get("response")),
        cors=parse_cors(rule.get("corsPolicy")),
        delegate=None if not rule.get("delegate") else Delegate(rule["delegate"]["name"],
                                                                rule["delegate"].get("namespace")),
    )


def _tcp_match(m: Mapping[str, Any]) -> TcpMatch:
    return TcpMatch(port=m.get("port"), source_labels=tuple(sorted((m.get("sourceLabels") or {}).items())),
                    source_namespace=m.get("sourceNamespace"), gateways=tuple(m.get("gateways") or ()))


def parse(spec: Mapping[str, Any]) -> VirtualServiceSpec:
    """The typed spec of a VirtualService whose ``spec`` the schema accepted."""
    return VirtualServiceSpec(
        hosts=tuple(spec.get("hosts") or ()),
        http=tuple(_http_route(rule) for rule in spec.get("http") or ()),
        tcp=tuple(TcpRoute(_route(rule["route"]), tuple(_tcp_match(m) for m in rule.get("match") or ()))
                  for rule in spec.get("tcp") or ()),
        gateways=tuple(spec.get("gateways") or (MESH,)),
        tls=tuple(TlsRoute(tuple(_tls_match(m) for m in rule["match"]), _route(rule["route"]))
                  for rule in spec.get("tls") or ()),
    )


def _tls_match(m: Mapping[str, Any]) -> TlsMatch:
    return TlsMatch(sni_hosts=tuple(m["sniHosts"]), port=m.get("port"),
                    source_labels=tuple(sorted((m.get("sourceLabels") or {}).items())),
                    source_namespace=m.get("sourceNamespace"), gateways=tuple(m.get("gateways") or ()))


def spec_of(vs: Resource) -> VirtualServiceSpec:
    """The typed spec of a VirtualService resource (parsed once, kept on the resource)."""
    typed: VirtualServiceSpec = vs.typed
    return typed


__all__ = [
    "VirtualServiceSpec", "HttpRoute", "TcpRoute", "TcpMatch", "Delegate", "ListenerPorts", "GRPC_STATUS_CODES", "TlsRoute", "TlsMatch", "Match", "StringMatch", "Destination", "RouteDestination",
    "Retries", "Fault", "FaultDelay", "FaultAbort", "Redirect", "Rewrite", "DirectResponse", "Mirror", "HeaderOperations", "EXACT", "PREFIX", "REGEX", "PRESENT", "parse",
    "spec_of",
]
