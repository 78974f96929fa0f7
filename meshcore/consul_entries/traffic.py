"""``service-resolver``, ``service-splitter``, ``service-router``, ``service-defaults`` and ``proxy-defaults``
-> DestinationRule and VirtualService (pure).

Consul's discovery chain for a service D: its router (ordered routes, first match wins; the last,
implicit route goes to D), each route's destination through that service's splitter (weights), each
split through the target's resolver (``DefaultSubset``, ``Redirect``, subsets by ``Filter``). meshcore
spells the same chain as one VirtualService for D (routes in order, weights on a route, subsets by name)
and one DestinationRule per service (subsets by labels, connection limits, outlier detection, connect
timeout, load balancer, datacenter failover).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ..policies.destination_rule.schema import API_VERSION as DR_API, KIND_NAME as DR_KIND
from ..policies.virtual_service.schema import API_VERSION as VS_API, KIND_NAME as VS_KIND, RETRY_ON
from ._common import Out, Report, document, report_unknown, resource_name
from .gateway_modes import check_gateway_mode, report_registrations_that_win
from .model import CompileOptions, ConfigEntry
from .protocols import PROTOCOLS, EntryProtocols, entry_protocols

_META = re.compile(r'^Service\.Meta\.([A-Za-z0-9_.-]+)\s*==\s*"?([^"\s]+)"?$')
_TAG_IN = re.compile(r'^"([^"]+)"\s+in\s+Service\.Tags$')
_TAG_CONTAINS = re.compile(r'^Service\.Tags\s+contains\s+"([^"]+)"$')
_LB = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}


def _duration(value: Any) -> str | None:
    """Consul durations: "5s", "1m30s", or nanoseconds as a number."""
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{max(1, int(value // 1_000_000))}ms"
    return str(value)


def filter_labels(entry: ConfigEntry, path: str, text: str, report: Report) -> dict[str, str] | None:
    """A subset ``Filter`` (Consul's bexpr) -> subset labels; None when it is not a conjunction meshcore can
    express (``Service.Meta.<k> == <v>``, ``"<t>" in Service.Tags``, ``Service.Tags contains "<t>"``, joined by
    ``and``)."""
    labels: dict[str, str] = {}
    for part in re.split(r"\s+and\s+", text.strip()) if text.strip() else []:
        part = part.strip().strip("()").strip()
        m = _META.match(part)
        if m:
            labels[m.group(1)] = m.group(2)
            continue
        m = _TAG_IN.match(part) or _TAG_CONTAINS.match(part)
        if m:
            labels[f"tag:{m.group(1)}"] = "true"
            continue
        report.unsupported(entry, path, f"filter term {part!r}: meshcore subsets select by equality on meta "
                                        "and by tags, joined with 'and' (Service.Meta.version == v1, "
                                        "\"canary\" in Service.Tags); the subset is left out")
        return None
    return labels


class _Chain:
    """The entries of every service, indexed, and how a (service, subset) target resolves."""

    def __init__(self, entries: Iterable[ConfigEntry]):
        self.by_kind: dict[str, dict[str, ConfigEntry]] = {}
        for e in entries:
            self.by_kind.setdefault(e.kind, {})[e.name] = e

    def get(self, kind: str, name: str) -> ConfigEntry | None:
        return self.by_kind.get(kind, {}).get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind.get(kind, {}))

    def target(self, service: str, subset: str) -> tuple[str, str]:
        """(service, subset) after the resolver's Redirect and DefaultSubset (one redirect, as Consul)."""
        resolver = self.get("service-resolver", service)
        if resolver is not None and not subset:
            redirect = resolver.get("Redirect") or {}
            if redirect.get("Service") or redirect.get("ServiceSubset"):
                service = redirect.get("Service") or service
                subset = redirect.get("ServiceSubset") or ""
                resolver = self.get("service-resolver", service)
        if resolver is not None and not subset:
            subset = resolver.get("DefaultSubset") or ""
        return service, subset


def _destination(service: str, subset: str) -> dict:
    d = {"host": service}
    if subset:
        d["subset"] = subset
    return d


def _weights(entry: ConfigEntry, splits: list[dict], report: Report) -> list[int]:
    """Consul weights (0.01 steps summing to 100) -> meshcore's integers summing to 100 (largest remainder)."""
    raw = [float(s.get("Weight") or 0) for s in splits]
    total = sum(raw) or 1.0
    scaled = [w * 100.0 / total for w in raw]
    ints = [int(w) for w in scaled]
    for i in sorted(range(len(scaled)), key=lambda i: ints[i] - scaled[i])[: 100 - sum(ints)]:
        ints[i] += 1
    if any(abs(a - b) > 1e-9 for a, b in zip(ints, raw)):
        report.add(entry, "Splits", "note", f"weights {raw} rounded to whole percent {ints} (meshcore's weights "
                                            "are integers summing to 100)")
    return ints


def _headers(entry: ConfigEntry, path: str, raw: dict | None) -> dict | None:
    if not raw:
        return None
    out: dict[str, Any] = {}
    for key, field in (("Set", "set"), ("Add", "add")):
        if raw.get(key):
            out[field] = {str(k): str(v) for k, v in raw[key].items()}
    if raw.get("Remove"):
        out["remove"] = [str(v) for v in raw["Remove"]]
    return out or None


def _split_route(chain: _Chain, service: str, report: Report) -> tuple[list[dict], dict | None]:
    """The weighted destinations of ``service``'s splitter (and the headers its splits set alike)."""
    splitter = chain.get("service-splitter", service)
    assert splitter is not None
    splits = [s for s in splitter.get("Splits") or () if isinstance(s, dict)]
    weights = _weights(splitter, splits, report)
    route = []
    headers: dict[str, Any] = {}
    for i, (split, weight) in enumerate(zip(splits, weights)):
        report_unknown(splitter, split, ("Weight", "Service", "ServiceSubset", "RequestHeaders", "ResponseHeaders"),
                       report, f"Splits[{i}].")
        target = chain.target(split.get("Service") or service, split.get("ServiceSubset") or "")
        route.append({"destination": _destination(*target), "weight": weight})
        for key, field in (("RequestHeaders", "request"), ("ResponseHeaders", "response")):
            h = _headers(splitter, f"Splits[{i}].{key}", split.get(key))
            if h:
                headers.setdefault(field, []).append((i, h))
    out_headers: dict[str, Any] = {}
    for field, items in headers.items():
        if len(items) == len(splits) and all(h == items[0][1] for _, h in items):
            out_headers[field] = items[0][1]
        else:
            for i, _ in items:
                report.unsupported(splitter, f"Splits[{i}].{'RequestHeaders' if field == 'request' else 'ResponseHeaders'}",
                                   "meshcore sets headers per route, not per weighted destination; headers that "
                                   "differ between splits are left out")
    if len(route) == 1:
        route[0].pop("weight", None)
    return route, out_headers or None


def _default_route(chain: _Chain, service: str, subset: str, report: Report) -> tuple[list[dict], dict | None]:
    if not subset and chain.get("service-splitter", service) is not None:
        return _split_route(chain, service, report)
    return [{"destination": _destination(*chain.target(service, subset))}], None


def _string_match(entry: ConfigEntry, path: str, m: dict, report: Report, *, suffix_ok: bool = True) -> dict | None:
    if m.get("Invert"):
        report.unsupported(entry, f"{path}.Invert", "inverted matches are not supported by meshcore's "
                                                   "VirtualService; the route is left out")
        return None
    if m.get("Exact") not in (None, ""):
        return {"exact": str(m["Exact"])}
    if m.get("Prefix"):
        return {"prefix": str(m["Prefix"])}
    if m.get("Suffix") and suffix_ok:
        return {"regex": ".*" + re.escape(str(m["Suffix"]))}
    if m.get("Regex"):
        return {"regex": str(m["Regex"])}
    if m.get("Present"):
        return {"regex": ".*"}
    report.unsupported(entry, path, "a match needs Present, Exact, Prefix, Suffix or Regex; the route is left out")
    return None


def _match(entry: ConfigEntry, path: str, raw: dict | None, report: Report) -> dict | None | bool:
    """A route's ``Match`` -> a VirtualService match (None: matches everything; False: cannot express)."""
    http = (raw or {}).get("HTTP") or {}
    if not http:
        return None
    report_unknown(entry, http, ("PathExact", "PathPrefix", "PathRegex", "Header", "QueryParam", "Methods"),
                   report, f"{path}.HTTP.")
    match: dict[str, Any] = {}
    for key, field in (("PathExact", "exact"), ("PathPrefix", "prefix"), ("PathRegex", "regex")):
        if http.get(key):
            match["uri"] = {field: str(http[key])}
    for kind, field in (("Header", "headers"), ("QueryParam", "queryParams")):
        for i, h in enumerate(http.get(kind) or ()):
            name = str((h or {}).get("Name") or "")
            sub = f"{path}.HTTP.{kind}[{i}]"
            if not name or name in match.get(field, {}):
                report.unsupported(entry, sub, "each header/query parameter may be matched once, by name; the "
                                               "route is left out")
                return False
            m = _string_match(entry, sub, h, report)
            if m is None:
                return False
            match.setdefault(field, {})[name.lower() if kind == "Header" else name] = m
    methods = sorted({str(m).upper() for m in http.get("Methods") or ()})
    if methods:
        match["method"] = {"exact": methods[0]} if len(methods) == 1 else {"regex": "|".join(methods)}
    return match


def _retries(entry: ConfigEntry, path: str, dest: dict, report: Report) -> dict | None:
    conditions: list[str] = []
    if dest.get("RetryOnConnectFailure"):
        conditions.append("connect-failure")
    for i, cond in enumerate(dest.get("RetryOn") or ()):
        if cond in RETRY_ON:
            conditions.append(cond)
        else:
            report.unsupported(entry, f"{path}.RetryOn[{i}]", f"retry condition {cond!r} is not one meshcore knows "
                                                             f"({', '.join(RETRY_ON)})")
    conditions.extend(str(int(c)) for c in dest.get("RetryOnStatusCodes") or ())
    attempts = int(dest.get("NumRetries") or 0)
    if not conditions:
        if attempts:
            report.add(entry, f"{path}.NumRetries", "note", "no retry condition is set (RetryOn, RetryOnStatusCodes, "
                                                            "RetryOnConnectFailure): Consul then retries nothing, "
                                                            "and neither does meshcore")
        return None
    return {"attempts": attempts or 1, "retryOn": ",".join(dict.fromkeys(conditions))}


def _prefix_rewrite(router: ConfigEntry, dpath: str, value: Any, match: dict, report: Report) -> str | None:
    """``PrefixRewrite`` -> the rule's ``rewrite.uri``: it replaces the matched prefix (the whole path under
    ``PathExact``), as Consul's Envoy route does; Consul requires a ``PathPrefix`` or ``PathExact`` match."""
    if not value:
        return None
    uri = match.get("uri") or {}
    if "prefix" not in uri and "exact" not in uri:
        report.unsupported(router, f"{dpath}.PrefixRewrite", "a prefix rewrite needs Match.HTTP.PathPrefix or "
                                                             "PathExact on the route (as in Consul); the route "
                                                             "applies without it")
        return None
    return str(value)


def _router_rules(chain: _Chain, router: ConfigEntry, report: Report) -> list[dict]:
    rules = []
    for i, route in enumerate(router.get("Routes") or ()):
        path = f"Routes[{i}]"
        if not isinstance(route, dict):
            continue
        report_unknown(router, route, ("Match", "Destination"), report, f"{path}.")
        match = _match(router, f"{path}.Match", route.get("Match"), report)
        if match is False:
            continue
        dest = route.get("Destination") or {}
        dpath = f"{path}.Destination"
        report_unknown(router, dest, ("Service", "ServiceSubset", "Namespace", "RequestTimeout", "NumRetries",
                                      "RetryOnConnectFailure", "RetryOnStatusCodes", "RetryOn", "RequestHeaders",
                                      "ResponseHeaders", "PrefixRewrite", "IdleTimeout"), report, f"{dpath}.")
        if dest.get("IdleTimeout"):
            report.unsupported(router, f"{dpath}.IdleTimeout", "meshcore's VirtualService has no per-route idle "
                                                               "timeout; the route applies without it")
        if (dest.get("Namespace") or "default") != "default":
            report.unsupported(router, f"{dpath}.Namespace", "routing to another Consul namespace is not supported; "
                                                             "the route is left out")
            continue
        route_to, headers = _default_route(chain, dest.get("Service") or router.name, dest.get("ServiceSubset") or "",
                                           report)
        rule: dict[str, Any] = {"name": f"consul-route-{i}", "route": route_to}
        if match:
            rule["match"] = [match]
        rewrite = _prefix_rewrite(router, dpath, dest.get("PrefixRewrite"), match if isinstance(match, dict) else {}, report)
        if rewrite is not None:
            rule["rewrite"] = {"uri": rewrite}
        timeout = _duration(dest.get("RequestTimeout"))
        if timeout:
            rule["timeout"] = timeout
        retries = _retries(router, dpath, dest, report)
        if retries:
            rule["retries"] = retries
        headers = dict(headers or {})
        for key, field in (("RequestHeaders", "request"), ("ResponseHeaders", "response")):
            h = _headers(router, f"{dpath}.{key}", dest.get(key))
            if h:
                headers[field] = h
        if headers:
            rule["headers"] = headers
        rules.append(rule)
    return rules


def _virtual_service(chain: _Chain, service: str, options: CompileOptions, protocols: EntryProtocols,
                     report: Report) -> Out | None:
    router = chain.get("service-router", service)
    splitter = chain.get("service-splitter", service)
    resolver = chain.get("service-resolver", service)
    redirect = bool(resolver and (resolver.get("Redirect") or {}))
    if not (router or splitter or (resolver and (resolver.get("DefaultSubset") or redirect))):
        return None
    refs = tuple(e.ref for e in (router, splitter, resolver) if e is not None)
    default_route, headers = _default_route(chain, service, "", report)
    tcp = options.catalog.effective_protocols(service, protocols.of(service)) == frozenset({"tcp"})
    if tcp:
        if router is not None:
            report.unsupported(router, "Routes", f"{service} is a TCP service (protocol tcp): HTTP routes do "
                                                 "not apply; only the default destination and weights do")
        spec: dict[str, Any] = {"hosts": [service], "tcp": [{"route": default_route}]}
    else:
        rules = _router_rules(chain, router, report) if router is not None else []
        last: dict[str, Any] = {"name": "consul-default", "route": default_route}
        if headers:
            last["headers"] = headers
        spec = {"hosts": [service], "http": rules + [last]}
    doc = document(VS_API, VS_KIND, resource_name("consul", service), _namespace(service, options), spec, refs)
    return Out(doc, "traffic", service, refs)


def _namespace(service: str, options: CompileOptions) -> str:
    found = sorted({ns for ns, _ in options.catalog.identities.get(service, ())})
    return found[0] if found else "default"


def _limits(entry: ConfigEntry, path: str, raw: dict, report: Report) -> dict[str, Any]:
    """``UpstreamConfig`` limits, connect timeout and passive health check -> a DestinationRule trafficPolicy."""
    policy: dict[str, Any] = {}
    limits = raw.get("Limits") or {}
    report_unknown(entry, limits, ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests"), report,
                   f"{path}.Limits.")
    tcp: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if limits.get("MaxConnections"):
        tcp["maxConnections"] = int(limits["MaxConnections"])
    if limits.get("MaxPendingRequests"):
        http["http1MaxPendingRequests"] = int(limits["MaxPendingRequests"])
    if limits.get("MaxConcurrentRequests"):
        http["http2MaxRequests"] = int(limits["MaxConcurrentRequests"])
    if raw.get("ConnectTimeoutMs"):
        tcp["connectTimeout"] = f"{int(raw['ConnectTimeoutMs'])}ms"
    pool = {k: v for k, v in (("tcp", tcp), ("http", http)) if v}
    if pool:
        policy["connectionPool"] = pool
    phc = raw.get("PassiveHealthCheck") or {}
    report_unknown(entry, phc, ("Interval", "MaxFailures", "MaxEjectionPercent", "BaseEjectionTime",
                                "EnforcingConsecutive5xx"), report, f"{path}.PassiveHealthCheck.")
    outlier: dict[str, Any] = {}
    if phc.get("MaxFailures"):
        outlier["consecutive5xxErrors"] = int(phc["MaxFailures"])
    for key, field in (("Interval", "interval"), ("BaseEjectionTime", "baseEjectionTime")):
        d = _duration(phc.get(key))
        if d:
            outlier[field] = d
    if phc.get("MaxEjectionPercent") is not None and phc.get("MaxEjectionPercent") != 0:
        outlier["maxEjectionPercent"] = int(phc["MaxEjectionPercent"])
    if phc.get("EnforcingConsecutive5xx") not in (None, 100):
        report.unsupported(entry, f"{path}.PassiveHealthCheck.EnforcingConsecutive5xx",
                           "meshcore always enforces consecutive-5xx ejection (100%)")
    if outlier:
        policy["outlierDetection"] = outlier
    return policy


def _merge(into: dict, extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _failover_targets(chain: _Chain, resolver: ConfigEntry, path: str, raw: dict, options: CompileOptions,
                      report: Report) -> tuple[list[tuple[str, str, str]], list[str]]:
    """One ``Failover`` entry -> ``(service, subset, datacenter)`` targets in order (datacenter "": every one the
    control plane reads; a named one: that datacenter's instances only), and the other datacenters to fail over to
    for the same service without subset (the DestinationRule's locality failover)."""
    for field in ("Namespace", "SamenessGroup", "Policy"):
        if raw.get(field):
            report.unsupported(resolver, f"{path}.{field}", "meshcore fails over within one namespace, in order; "
                                                            "this field is ignored")
    wanted: list[tuple[str, str, str]] = []  # (service, subset, datacenter)
    if raw.get("Targets"):
        for field in ("Service", "ServiceSubset", "Datacenters"):
            if raw.get(field):
                report.unsupported(resolver, f"{path}.{field}", "Consul ignores it beside Targets; so does meshcore")
        for j, t in enumerate(raw.get("Targets") or ()):
            t = t or {}
            tpath = f"{path}.Targets[{j}]"
            for field in ("Namespace", "Partition", "Peer"):
                if t.get(field):
                    report.unsupported(resolver, f"{tpath}.{field}", "peering, partitions and namespaces are not "
                                                                     "part of meshcore; the target is left out")
            if any(t.get(f) for f in ("Namespace", "Partition", "Peer")):
                continue
            wanted.append((str(t.get("Service") or ""), str(t.get("ServiceSubset") or ""),
                           str(t.get("Datacenter") or "")))
    else:
        service, subset = str(raw.get("Service") or ""), str(raw.get("ServiceSubset") or "")
        for dc in raw.get("Datacenters") or ():
            wanted.append((service, subset, str(dc)))
        if not raw.get("Datacenters") and (service or subset):
            wanted.append((service, subset, ""))
    targets: list[tuple[str, str, str]] = []
    dcs: list[str] = []
    for service, subset, dc in wanted:
        own = not service or service == resolver.name
        if dc and own and not subset:
            if dc != options.datacenter:
                dcs.append(dc)  # the same service in another datacenter: the locality failover
            continue
        target = chain.target(service or resolver.name, subset) if not own or not subset else (resolver.name, subset)
        # another service or subset in a given datacenter (Consul's Targets[].Datacenter, or Service with
        # Datacenters): a target of that datacenter's instances only
        placed = (*target, dc)
        if placed not in targets:
            targets.append(placed)
    return targets, dcs


def _failover(chain: _Chain, resolver: ConfigEntry, subsets: set[str], options: CompileOptions,
              report: Report) -> tuple[list[str], list[dict]]:
    """The resolver's ``Failover`` -> (datacenters for the locality failover, the DestinationRule ``failover``)."""
    failover = resolver.get("Failover") or {}
    to: list[str] = []
    out: list[dict] = []
    for key in sorted(failover):
        raw = failover[key] or {}
        path = f"Failover.{key}"
        report_unknown(resolver, raw, ("Service", "ServiceSubset", "Namespace", "Datacenters", "Targets",
                                       "SamenessGroup", "Policy"), report, f"{path}.")
        if key != "*" and key not in subsets:
            report.unsupported(resolver, path, f"subset {key!r} is not defined (or was left out); its failover is "
                                               "left out")
            continue
        targets, dcs = _failover_targets(chain, resolver, path, raw, options, report)
        if dcs and key != "*":
            report.unsupported(resolver, f"{path}.Datacenters", "datacenter failover is per service in meshcore "
                                                                "(DestinationRule localityLbSetting): use the '*' key")
        elif dcs:
            to.extend(d for d in dcs if d not in to)
        entry_targets = []
        for service, subset, dc in targets:
            if service == resolver.name and (subset or None) == (None if key == "*" else key) and not dc:
                continue
            other = chain.get("service-resolver", service) if service != resolver.name else None
            if subset and (subset not in subsets if service == resolver.name
                           else other is None or subset not in (other.get("Subsets") or {})):
                report.unsupported(resolver, path, f"failover target {service}/{subset}: no resolver of {service} "
                                                   "defines that subset; the target is left out")
                continue
            t: dict[str, str] = {}
            if service != resolver.name:
                t["host"] = service
            if subset:
                t["subset"] = subset
            if dc:
                t["datacenter"] = dc
            entry_targets.append(t)
        if entry_targets:
            out.append({**({"subset": key} if key != "*" else {}), "targets": entry_targets})
    return to, out


def _destination_rule(chain: _Chain, service: str, upstream_cfg: list[tuple[ConfigEntry, str, dict]],
                      options: CompileOptions, report: Report) -> Out | None:
    resolver = chain.get("service-resolver", service)
    policy: dict[str, Any] = {}
    subsets = []
    refs: list[str] = []
    failover_spec: list[dict] = []
    if resolver is not None:
        refs.append(resolver.ref)
        report_unknown(resolver, dict(resolver.body), ("Subsets", "DefaultSubset", "Redirect", "Failover",
                                                       "ConnectTimeout", "LoadBalancer", "RequestTimeout"), report)
        for name in sorted(resolver.get("Subsets") or {}):
            raw = resolver.get("Subsets")[name] or {}
            path = f"Subsets.{name}"
            report_unknown(resolver, raw, ("Filter", "OnlyPassing"), report, f"{path}.")
            labels = filter_labels(resolver, f"{path}.Filter", str(raw.get("Filter") or ""), report)
            if labels is None:
                continue
            subset: dict[str, Any] = {"name": name}
            if labels:
                subset["labels"] = labels
            subsets.append(subset)
        timeout = _duration(resolver.get("ConnectTimeout"))
        if timeout:
            policy["connectionPool"] = {"tcp": {"connectTimeout": timeout}}
        if resolver.get("RequestTimeout"):
            report.unsupported(resolver, "RequestTimeout", "set the timeout on a service-router route (or a "
                                                           "VirtualService); a resolver-wide request timeout is not "
                                                           "supported")
        redirect = resolver.get("Redirect") or {}
        for key in ("Datacenter", "Namespace", "Partition", "Peer", "SamenessGroup", "ServiceSubset", "Service"):
            if redirect.get(key) and key not in ("Service", "ServiceSubset"):
                report.unsupported(resolver, f"Redirect.{key}", "meshcore redirects within its own datacenter only; "
                                                                "this part of the redirect is ignored")
        lb = resolver.get("LoadBalancer") or {}
        if lb.get("Policy"):
            pol = str(lb["Policy"])
            if pol in _LB:
                policy["loadBalancer"] = {"simple": _LB[pol]}
            elif pol in ("ring_hash", "maglev"):
                hashes = [h for h in lb.get("HashPolicies") or () if isinstance(h, dict)]
                h = hashes[0] if hashes else {}
                field, value = h.get("Field"), h.get("FieldValue")
                hash_key = {"header": "httpHeaderName", "query_parameter": "httpQueryParameterName"}.get(str(field))
                if hash_key and value:
                    policy["loadBalancer"] = {"consistentHash": {hash_key: str(value)}}
                elif h.get("SourceIP"):
                    policy["loadBalancer"] = {"consistentHash": {"useSourceIp": True}}
                else:
                    report.unsupported(resolver, "LoadBalancer.HashPolicies", "meshcore hashes on one header, query "
                                                                              "parameter or the source IP")
                if len(hashes) > 1:
                    report.unsupported(resolver, "LoadBalancer.HashPolicies[1]", "only the first hash policy is used")
            else:
                report.unsupported(resolver, "LoadBalancer.Policy", f"unknown load balancer policy {pol!r}")
        to, failover_spec = _failover(chain, resolver, {s["name"] for s in subsets}, options, report)
        if to:
            policy["loadBalancer"] = {**policy.get("loadBalancer", {}),
                                      "localityLbSetting": {"enabled": True, "failover": [
                                          {"from": options.datacenter, "to": d} for d in to if d != options.datacenter]}}
    for entry, path, raw in upstream_cfg:
        refs.append(entry.ref)
        _merge(policy, _limits(entry, path, raw, report))
    if not policy and not subsets and not failover_spec:  # a Failover to other services alone is a rule too
        return None
    spec: dict[str, Any] = {"host": service}
    if policy:
        spec["trafficPolicy"] = policy
    if subsets:
        spec["subsets"] = subsets
    if failover_spec:
        spec["failover"] = failover_spec
    refs_t = tuple(dict.fromkeys(refs))
    doc = document(DR_API, DR_KIND, resource_name("consul", service), _namespace(service, options), spec, refs_t)
    return Out(doc, "destination", service, refs_t)


def _protocols(chain: _Chain, options: CompileOptions, report: Report) -> EntryProtocols:
    """The protocols the entries set (:mod:`.protocols`: the catalog hands them to generation); an instance's
    own meta ``protocol`` that differs wins, and is reported as overriding the entry."""
    global_entry = chain.get("proxy-defaults", "global")
    if global_entry is not None:
        config = global_entry.get("Config") or {}
        for key in sorted(config):
            if key != "protocol":
                report.unsupported(global_entry, f"Config.{key}", "meshcore understands only the 'protocol' key of "
                                                                  "the proxy Config")
        report_unknown(global_entry, dict(global_entry.body), ("Config", "MeshGateway"), report)
        check_gateway_mode(global_entry, "MeshGateway", global_entry.get("MeshGateway"), report)
    sources: dict[str, tuple[ConfigEntry, str]] = {}
    for name in chain.names("service-defaults"):
        entry = chain.get("service-defaults", name)
        assert entry is not None
        if entry.get("Protocol"):
            sources[name] = (entry, "Protocol")
    if global_entry is not None and (global_entry.get("Config") or {}).get("protocol"):
        sources[""] = (global_entry, "Config.protocol")
    for entry, field in sources.values():
        value = str(entry.get("Protocol") if field == "Protocol" else (entry.get("Config") or {}).get("protocol"))
        if value.lower() not in PROTOCOLS:
            report.unsupported(entry, field, f"protocol {value!r} is not one of {', '.join(PROTOCOLS)}; ignored")
    protocols = entry_protocols(chain.by_kind.get("service-defaults", {}).values()
                                if global_entry is None else
                                [*chain.by_kind.get("service-defaults", {}).values(), global_entry])
    facts = options.catalog
    for service in facts.services:
        wanted = protocols.of(service)
        if not wanted:
            continue
        entry, field = sources.get(service) or sources[""]
        others = sorted(set(facts.declared.get(service, ())) - {wanted})
        if others:
            report.add(entry, field, "overridden", f"{service}: instances whose meta protocol is "
                                                   f"{', '.join(others)} keep it (an instance's own meta protocol "
                                                   f"wins over the entry's {wanted!r})")
    return protocols


def compile_traffic(entries: Iterable[ConfigEntry], options: CompileOptions, report: Report) -> list[Out]:
    entries = list(entries)
    chain = _Chain(entries)
    protocols = _protocols(chain, options, report)
    report_registrations_that_win(entries, options.catalog, report)
    upstream_cfg: dict[str, list[tuple[ConfigEntry, str, dict]]] = {}
    for name in chain.names("service-defaults"):
        entry = chain.get("service-defaults", name)
        assert entry is not None
        report_unknown(entry, dict(entry.body), ("Protocol", "UpstreamConfig", "MeshGateway"), report)
        check_gateway_mode(entry, "MeshGateway", entry.get("MeshGateway"), report)
        cfg = entry.get("UpstreamConfig") or {}
        report_unknown(entry, cfg, ("Overrides", "Defaults"), report, "UpstreamConfig.")
        defaults = cfg.get("Defaults") or {}
        check_gateway_mode(entry, "UpstreamConfig.Defaults.MeshGateway", defaults.get("MeshGateway"), report)
        if any(v for k, v in defaults.items() if k != "MeshGateway"):
            report.unsupported(entry, "UpstreamConfig.Defaults", "meshcore sets limits per destination service: "
                                                                 "write them as UpstreamConfig.Overrides for each "
                                                                 "upstream")
        for i, override in enumerate(cfg.get("Overrides") or ()):
            path = f"UpstreamConfig.Overrides[{i}]"
            target = str((override or {}).get("Name") or "")
            if not target:
                report.unsupported(entry, path, "an override needs the Name of the upstream service")
                continue
            report_unknown(entry, override, ("Name", "Namespace", "Limits", "PassiveHealthCheck", "ConnectTimeoutMs",
                                             "Protocol", "MeshGateway"), report, f"{path}.")
            check_gateway_mode(entry, f"{path}.MeshGateway", override.get("MeshGateway"), report)
            if not any(v for k, v in override.items() if k not in ("Name", "Namespace", "MeshGateway")):
                continue  # a mesh gateway mode only: the catalog carries it (gateway_modes), no DestinationRule
            report.add(entry, path, "note", f"limits on {target} apply to every caller of {target} in meshcore "
                                            f"(a DestinationRule), not only to {name}")
            upstream_cfg.setdefault(target, []).append((entry, path, override))
    services = sorted(set(chain.names("service-resolver")) | set(chain.names("service-splitter"))
                      | set(chain.names("service-router")) | set(upstream_cfg))
    out: list[Out] = []
    for service in services:
        dr = _destination_rule(chain, service, upstream_cfg.get(service, []), options, report)
        if dr is not None:
            out.append(dr)
        vs = _virtual_service(chain, service, options, protocols, report)
        if vs is not None:
            out.append(vs)
    for name in chain.names("service-splitter"):
        entry = chain.get("service-splitter", name)
        assert entry is not None
        report_unknown(entry, dict(entry.body), ("Splits",), report)
    for name in chain.names("service-router"):
        entry = chain.get("service-router", name)
        assert entry is not None
        report_unknown(entry, dict(entry.body), ("Routes",), report)
    return out
