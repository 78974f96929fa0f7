"""The graph's click-through (pure): what ``GET /v1/dashboard/service`` and ``GET /v1/dashboard/edge`` answer.

Everything is read from one mesh snapshot (catalog and resources) and the collector's signal history, with the
selection the rest of meshcore uses, never a matcher of its own:

* VirtualServices and DestinationRules by host as ``meshctl traffic show`` lists them, the one in effect as the
  sidecars' routes pick it (:func:`~meshcore.policies.virtual_service.schema.service_for`, delegates resolved by
  :func:`~meshcore.policies.virtual_service.delegation.http_rules`, a rule's ``sourceLabels`` met as
  :meth:`Match.from_caller` reads them; :func:`~meshcore.policies.destination_rule.schema.rule_for` with the
  caller's workload);
* AuthorizationPolicies, RequestAuthentications, PeerAuthentications and Sidecars by the selection generation
  uses for each instance (``policies_for``, ``authentications_for``, ``effective_mtls``, ``sidecar_for``); for an
  ingress gateway the Gateways selecting it (``gateways_for``) and the VirtualServices bound to them;
* an edge's verdict from :func:`meshcore.authz.check` (what ``meshctl authz check`` reports) for a GET /.

Denials: the collector's ``policy_denied`` per destination service (Envoy's RBAC counters), and who was denied by
which policy from ``policy_denied_by_caller`` (the agents count it from Envoy's access log; ``unknown`` callers where
an agent does not follow it). Paths are not kept; ``meshctl authz dry-run`` over the access logs shows them.
Consul config entries are not mesh resources (they reach the control plane through the catalog): not listed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from ..api.dashboard import (AppliedResource, AuthzVerdict, DeniedCaller, DenialsView, EdgeDetail, InstanceRow,
                             RouteRow, ServiceDetail, WindowFigures)
from ..catalog.model import ServiceInstance
from ..errors import MeshError, NotFound
from ..observe.signals import Labels

#: ``history(signal, since)``: ``[(unix time, {labels: value})]`` of one signal from ``since`` on (the collector's).
History = Callable[[str, float], Sequence[tuple[float, Mapping[Labels, float]]]]

VS, DR, AP, PA, RA, SIDECAR = ("VirtualService", "DestinationRule", "AuthorizationPolicy", "PeerAuthentication",
                               "RequestAuthentication", "Sidecar")
AUTHZ_REQUEST = ("GET", "/")
_RULE_KEYS = ("name", "match", "route", "delegate")
DENIALS_NOTE = ("rates from Envoy's RBAC counters at the service's inbound listeners; the control plane keeps no "
                "record of which callers or paths were denied (meshctl authz dry-run over the access logs names them)")
CALLERS_NOTE = ("rates from Envoy's RBAC counters; callers and deciding policies as the agents count them from "
                "Envoy's access log; paths are not kept (meshctl authz dry-run over the access logs shows them)")
UNKNOWN_CALLERS_NOTE = ("rates from Envoy's RBAC counters; the agents here do not follow Envoy's access log, so the "
                        "callers are unknown (set --access-log to a file); meshctl authz dry-run names them")
UNKNOWN = "unknown"  # meshcore.agent._series.UNKNOWN_SOURCE: a denial counted without its caller


def _version(inst: ServiceInstance) -> str:
    return inst.labels.get("version", "")


def instances_of(snapshot: Any, service: str, version: str = "") -> list[ServiceInstance]:
    """The catalog instances of ``service`` (of ``version`` when given)."""
    return [i for i in snapshot.catalog.instances_of(service) if not version or _version(i) == version]


def instance_rows(instances: Iterable[ServiceInstance]) -> list[InstanceRow]:
    out = []
    for i in instances:
        host, port = (i.mesh_address, i.mesh_port) if i.mesh_address and i.mesh_port else (i.address, i.port)
        out.append(InstanceRow(id=i.id, node=i.node, address=f"{host}:{port}" if host else str(port),
                               version=_version(i), datacenter=i.datacenter, healthy=i.healthy, kind=i.kind))
    return sorted(out, key=lambda r: (r.datacenter, r.version, r.id))


def _ref(r: Any) -> str:
    return f"{r.namespace}/{r.name}"


def _ids(members: Iterable[ServiceInstance], of: Sequence[ServiceInstance]) -> str:
    ids = sorted({m.id for m in members})
    return "all instances" if len(ids) == len({i.id for i in of}) and len(of) > 1 else ", ".join(ids)


def applied_resources(snapshot: Any, service: str, instances: Sequence[ServiceInstance]) -> list[AppliedResource]:
    """Every resource that applies to ``service`` (its ``instances``), by kind: routing by host first, then what
    selects its workloads."""
    from ..policies.authorization_policy.schema import action_of, is_dry_run, policies_for
    from ..policies.destination_rule import schema as dr
    from ..policies.peer_authentication.schema import ROOT_NAMESPACE, effective_mtls
    from ..policies.peer_authentication.spec import spec_of as pa_spec
    from ..policies.request_authentication.schema import authentications_for
    from ..policies.virtual_service.schema import service_for
    from ..xds.generate.sidecar_scope import sidecar_for

    resources = snapshot.resources
    out: list[AppliedResource] = []
    active = service_for(resources, service)
    for r in sorted(snapshot.resources_of(VS), key=lambda r: (r.namespace, r.name)):
        if service in ((r.spec or {}).get("hosts") or ()):
            detail = ("routes the mesh's calls" if r is active else
                      f"not in effect: {_ref(active)} routes the mesh's calls" if active is not None else
                      "gateways only (not the mesh's sidecars)")
            out.append(AppliedResource(VS, r.namespace, r.name, f"hosts: {service}", detail))
    out += _gateway_resources(snapshot, [i for i in instances if i.kind])
    general = dr.rule_for(resources, service)
    for r in sorted(snapshot.resources_of(DR), key=lambda r: (r.namespace, r.name)):
        if (r.spec or {}).get("host") == service:
            selector = ((r.spec or {}).get("workloadSelector") or {}).get("matchLabels") or {}
            subsets = ", ".join(dr.subset_names(r))
            why = f"host: {service}" + (f" (for callers with {_pairs(selector)})" if selector else "")
            detail = (f"subsets {subsets}" if subsets else "no subsets") + ("" if r is general or selector
                                                                             else f"; not in effect: {_ref(general)}")
            out.append(AppliedResource(DR, r.namespace, r.name, why, detail))
    by_policy: dict[tuple[str, str, str], tuple[Any, list[ServiceInstance]]] = {}
    for inst in instances:
        for kind, chosen in ((AP, policies_for(resources, inst.labels, inst.namespace)),
                             (RA, authentications_for(resources, inst.labels, inst.namespace))):
            for r in chosen:
                by_policy.setdefault((kind, r.namespace, r.name), (r, []))[1].append(inst)
        for r in snapshot.resources_of(PA):
            typed = pa_spec(r)
            if (r.namespace == inst.namespace and typed.selects(inst.labels)) or (
                    not typed.match_labels and r.namespace in (inst.namespace, ROOT_NAMESPACE)):
                by_policy.setdefault((PA, r.namespace, r.name), (r, []))[1].append(inst)
        sidecar = sidecar_for(snapshot.resources_of(SIDECAR), inst)
        if sidecar is not None:
            by_policy.setdefault((SIDECAR, sidecar.namespace, sidecar.name), (sidecar, []))[1].append(inst)
    order = {AP: 0, PA: 1, RA: 2, SIDECAR: 3}
    for (kind, ns, name), (r, members) in sorted(by_policy.items(), key=lambda kv: (order[kv[0][0]], kv[0][1:])):
        selector = _selector_text(r)
        why = f"selects {_ids(members, instances)}" + (f" ({selector})" if selector else " (namespace or mesh-wide)")
        detail = ""
        if kind == AP:
            detail = action_of(r) + (" (dry run: not enforced)" if is_dry_run(r) else "")
        elif kind == PA:
            modes = sorted({effective_mtls(resources, m.labels, m.namespace, m.port) for m in members})
            detail = "effective mTLS " + "/".join(modes)
        out.append(AppliedResource(kind, ns, name, why, detail))
    return out


def _gateway_resources(snapshot: Any, gateways: Sequence[ServiceInstance]) -> list[AppliedResource]:
    """For ingress gateway instances: the Gateways selecting them (as their listeners are built) and the
    VirtualServices bound to those Gateways."""
    from ..policies.gateway.schema import gateway_ref, gateways_for

    chosen: dict[str, tuple[Any, list[ServiceInstance]]] = {}
    for inst in gateways:
        for g in gateways_for(snapshot.resources, inst.labels):
            chosen.setdefault(_ref(g), (g, []))[1].append(inst)
    out = []
    for ref, (g, members) in sorted(chosen.items()):
        hosts = sorted({h for srv in (g.spec or {}).get("servers") or () for h in srv.get("hosts") or ()})
        out.append(AppliedResource("Gateway", g.namespace, g.name, f"selects {_ids(members, gateways)}",
                                   "hosts " + ", ".join(hosts) if hosts else ""))
        for vs in sorted(snapshot.resources_of(VS), key=lambda r: (r.namespace, r.name)):
            if any(gateway_ref(vs.namespace, x) == ref for x in (vs.spec or {}).get("gateways") or ()):
                out.append(AppliedResource(VS, vs.namespace, vs.name, f"gateways: {ref}",
                                           "hosts " + ", ".join((vs.spec or {}).get("hosts") or ())))
    return out


def _pairs(labels: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _selector_text(r: Any) -> str:
    spec = r.spec or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or (spec.get("workloadSelector") or {}).get("labels") or {}
    return _pairs(labels)


# --- figures over the window ---------------------------------------------------------------------------------------


def _matching(points: Sequence[tuple[float, Mapping[Labels, float]]], want: Mapping[str, str]) -> list[tuple[float, float]]:
    """Per point time, the sum of the entries whose labels carry ``want`` (several when a label is left open)."""
    out = []
    for t, values in points:
        hits = [v for k, v in values.items() if all(dict(k).get(n) == w for n, w in want.items())]
        if hits:
            out.append((t, sum(hits)))
    return out


def window_figures(history: History, prefix: str, want: Mapping[str, str], since: float) -> WindowFigures:
    """Mean rate, failed share and worst p99 of the series ``<prefix>request_rate`` etc. matching ``want``."""
    rates = history(prefix + "request_rate", since)
    errors = history(prefix + "error_rate", since)
    p99s = history(prefix + "p99_ms", since)
    errors_at = dict(errors)
    by_time: dict[float, list[float]] = {}  # t -> [rps, failed/s]
    for t, values in rates:
        for k, v in values.items():
            if all(dict(k).get(n) == w for n, w in want.items()):
                err = errors_at.get(t, {}).get(k)
                row = by_time.setdefault(t, [0.0, 0.0])
                row[0] += v
                row[1] += v * (err or 0.0)
    worst = [v for _, v in _per_label_max(p99s, want)]
    if not by_time:
        return WindowFigures()
    times = sorted(by_time)
    total = sum(by_time[t][0] for t in times)
    failed = sum(by_time[t][1] for t in times)
    last = by_time[times[-1]]
    last_p99 = [v for t, v in _per_label_max(p99s, want) if t == times[-1]]
    return WindowFigures(rps=round(total / len(times), 3), error_rate=round(failed / total, 4) if total > 0 else None,
                         p99_ms=round(max(worst), 2) if worst else None, latest_rps=round(last[0], 3),
                         latest_error_rate=round(last[1] / last[0], 4) if last[0] > 0 else None,
                         latest_p99_ms=round(last_p99[0], 2) if last_p99 else None, points=len(times))


def _per_label_max(points: Sequence[tuple[float, Mapping[Labels, float]]], want: Mapping[str, str]):
    for t, values in points:
        hits = [v for k, v in values.items() if all(dict(k).get(n) == w for n, w in want.items())]
        if hits:
            yield t, max(hits)


def _estimate(points: Sequence[tuple[float, float]]) -> float:
    """How many, from rates at the end of each interval: each rate times the time since the previous point."""
    return sum(v * (t - prev) for (prev, _), (t, v) in zip(points, points[1:]))


def denied_callers(history: History, service: str, since: float) -> list[DeniedCaller]:
    """Who was denied at ``service`` by which policy over the window, most denied first (zero rows left out)."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for t, values in history("policy_denied_by_caller", since):
        for key, v in values.items():
            d = dict(key)
            if d.get("service") == service:
                series.setdefault((d.get("source", ""), d.get("policy", "")), []).append((t, v))
    rows = [DeniedCaller(source=src, policy=policy, per_second=round(sum(v for _, v in pts) / len(pts), 3),
                         estimated_total=round(_estimate(pts), 1))
            for (src, policy), pts in series.items() if any(v > 0 for _, v in pts)]
    return sorted(rows, key=lambda r: (-r.estimated_total, -r.per_second, r.source, r.policy))


def denials_view(history: History, service: str, since: float) -> DenialsView:
    points = _matching(history("policy_denied", since), {"service": service})
    callers = denied_callers(history, service, since)
    note = DENIALS_NOTE if not callers else (
        UNKNOWN_CALLERS_NOTE if all(c.source == UNKNOWN for c in callers) else CALLERS_NOTE)
    if not points:
        return DenialsView(per_second=None, latest_per_second=None, estimated_total=0.0, note=note,
                           callers=tuple(callers))
    return DenialsView(per_second=round(sum(v for _, v in points) / len(points), 3),
                       latest_per_second=round(points[-1][1], 3), estimated_total=round(_estimate(points), 1),
                       points=tuple((round(t, 3), round(v, 6)) for t, v in points), note=note, callers=tuple(callers))


def datacenters_seen(history: History, service: str, since: float) -> list[str]:
    """The datacenters the signals since ``since`` place ``service`` in: its calls' ``source_datacenter`` and
    ``destination_datacenter`` (version edges), and the mesh gateways' routes to it (``destination_datacenter``)."""
    found: set[str] = set()
    for _, values in history("version_edge_request_rate", since):
        for lbls in values:
            d = dict(lbls)
            for end in ("source", "destination"):
                if d.get(end) == service and d.get(f"{end}_datacenter"):
                    found.add(d[f"{end}_datacenter"])
    for _, values in history("gateway_connection_rate", since):
        for lbls in values:
            d = dict(lbls)
            if d.get("service") == service and d.get("destination_datacenter"):
                found.add(d["destination_datacenter"])
    return sorted(found)


def _not_in_catalog(snapshot: Any, history: History, name: str, since: float) -> NotFound:
    """The :class:`NotFound` for a service the catalog lacks; when the signals place it in a datacenter (one this
    control plane does not read), the answer says which (``datacenters`` in its JSON, for the dashboard)."""
    dcs = datacenters_seen(history, name, since)
    if dcs:
        return NotFound(f"service {name!r} is in datacenter {', '.join(dcs)} (seen in the calls since "
                        "the window's start), not in the catalog this control plane reads: ask that datacenter's "
                        "control plane, or add the datacenter to its --catalog (docs/multi-dc.md)",
                        {"datacenters": dcs})
    return NotFound(f"no service {name!r} in the catalog (known: {', '.join(snapshot.catalog.service_names())})")


def service_detail(snapshot: Any, history: History, name: str, *, since: float, now: float,
                   version: str = "") -> ServiceDetail:
    """A graph node's facts: ``name``'s instances (of ``version``), the resources that apply to them, its figures
    and denials since ``since`` (unix time). :class:`NotFound` when the catalog has no such service (saying in
    which datacenter the signals place it, if any: see :func:`datacenters_seen`)."""
    everything = list(snapshot.catalog.instances_of(name))
    if not everything:
        raise _not_in_catalog(snapshot, history, name, since)
    instances = instances_of(snapshot, name, version)
    if not instances:
        versions = ", ".join(sorted({_version(i) for i in everything})) or "none"
        raise NotFound(f"service {name!r} has no instances of version {version!r} (its versions: {versions})")
    kind = "gateway" if all(i.kind for i in instances) else "service"
    if version:
        figures = window_figures(history, "version_edge_", {"destination": name, "destination_version": version},
                                 since)
    else:
        figures = window_figures(history, "", {"service": name}, since)
    return ServiceDetail(name=name, version=version, kind=kind, since_seconds=round(now - since, 1),
                         instances=tuple(instance_rows(instances)),
                         resources=tuple(applied_resources(snapshot, name, instances)),
                         figures=figures, denials=denials_view(history, name, since), snapshot=snapshot.hash)


# --- an edge ---------------------------------------------------------------------------------------------------------


def _to_text(route: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for d in route:
        dest = d.get("destination") or {}
        where = dest.get("host", "") + (f"/{dest['subset']}" if dest.get("subset") else "")
        if (dest.get("port") or {}).get("number"):
            where += f":{dest['port']['number']}"
        parts.append(where + (f"={d['weight']}" if len(route) > 1 else ""))
    return ", ".join(parts)


def edge_routes(snapshot: Any, source: Sequence[ServiceInstance], destination: str) -> tuple[list[RouteRow], str]:
    """The http rules of the VirtualService routing ``destination`` that apply on the proxies of ``source``, in
    order, and a sentence saying which VirtualService that is (or that none routes it)."""
    from ..errors import RouteProblem
    from ..policies.virtual_service.delegation import http_rules
    from ..policies.virtual_service.schema import service_for

    services = snapshot.resources_of(VS)
    vs = service_for(services, destination)
    if vs is None:
        return [], f"no VirtualService routes {destination} for the mesh: calls go to every healthy instance"
    try:
        resolved = http_rules(vs, services)
    except RouteProblem as exc:
        return [], f"VirtualService {_ref(vs)} cannot be built: {exc}"
    rows = []
    for rr in resolved:
        matches = rr.rule.match
        if matches and not any(m.from_caller(i.labels, i.namespace) for m in matches for i in source):
            continue  # every alternative is for other callers (sourceLabels / sourceNamespace)
        raw = ((rr.vs.spec or {}).get("http") or [])[rr.index]
        rows.append(RouteRow(virtual_service=_ref(rr.vs), index=rr.index, name=rr.rule.name or raw.get("name", ""),
                             match=tuple(raw.get("match") or ()), to=_to_text(raw.get("route") or ()) or (
                                 "redirect" if raw.get("redirect") else "direct response" if raw.get("directResponse")
                                 else "-"),
                             extra={k: v for k, v in raw.items() if k not in _RULE_KEYS}))
    note = f"VirtualService {_ref(vs)} routes the calls" + ("" if rows else ", and none of its rules is for this caller")
    return rows, note


def edge_policy(snapshot: Any, source: Sequence[ServiceInstance], destination: str,
                destination_version: str) -> tuple[AppliedResource | None, dict]:
    """The DestinationRule the caller's proxies use for ``destination`` and its traffic policy for these calls (the
    subset selecting ``destination_version``'s policy merged over the rule's)."""
    from ..policies.destination_rule import schema as dr

    rule = dr.rule_for(snapshot.resources, destination, (source[0].labels, source[0].namespace) if source else None)
    if rule is None:
        return None, {}
    spec = rule.spec or {}
    policy = dict(spec.get("trafficPolicy") or {})
    why = f"host: {destination}"
    if destination_version:
        for sub in spec.get("subsets") or ():
            if dr.selects({"version": destination_version}, sub.get("labels")) and sub.get("labels"):
                policy.update(sub.get("trafficPolicy") or {})
                why += f", subset {sub['name']}"
                break
    return AppliedResource(DR, rule.namespace, rule.name, why, ", ".join(sorted(policy)) or "no traffic policy"), policy


def edge_authz(snapshot: Any, source: str, destination: str, destination_version: str,
               request: tuple[str, str] = AUTHZ_REQUEST) -> tuple[list[AuthzVerdict], bool | None, str]:
    """:func:`meshcore.authz.check` of ``request`` (method, path; a GET / by default) from ``source`` to
    ``destination`` (its instances of ``destination_version``): one verdict per instance group, whether all allow
    it, and a note."""
    from ..authz import CheckQuery, check

    method, path = request
    try:
        answer = check(snapshot, CheckQuery(destination=destination, source=source, method=method, path=path))
    except MeshError as exc:
        return [], None, str(exc)
    wanted = {i.id for i in instances_of(snapshot, destination, destination_version)}
    verdicts = [AuthzVerdict(instances=tuple(r["instances"]), allowed=bool(r["allowed"]), action=r.get("action") or "",
                             policy=r.get("policy"), reason=r.get("reason") or "")
                for r in answer["results"] if set(r["instances"]) & wanted]
    if not verdicts:
        return [], None, f"no instance of {destination} {destination_version} is decided by policies"
    return verdicts, all(v.allowed for v in verdicts), f"{method} {path} from {source}"


def edge_detail(snapshot: Any, history: History, source: str, destination: str, *, since: float, now: float,
                source_version: str = "", destination_version: str = "",
                request: tuple[str, str] = AUTHZ_REQUEST) -> EdgeDetail:
    """A graph edge's facts (see :class:`EdgeDetail`); ``request`` (method, path) the call the AuthorizationPolicies
    are asked about. :class:`NotFound` when the catalog lacks either end."""
    for name in (source, destination):
        if not snapshot.catalog.instances_of(name):
            raise _not_in_catalog(snapshot, history, name, since)
    callers = instances_of(snapshot, source, source_version) or instances_of(snapshot, source)
    if source_version or destination_version:
        want = {"source": source, "destination": destination}
        if source_version:
            want["source_version"] = source_version
        if destination_version:
            want["destination_version"] = destination_version
        figures = window_figures(history, "version_edge_", want, since)
    else:
        figures = window_figures(history, "edge_", {"source": source, "destination": destination}, since)
    routes, note = edge_routes(snapshot, callers, destination)
    rule, policy = edge_policy(snapshot, callers, destination, destination_version)
    verdicts, allowed, authz_note = edge_authz(snapshot, source, destination, destination_version, request)
    method, path = request
    return EdgeDetail(source=source, destination=destination, source_version=source_version,
                      destination_version=destination_version, since_seconds=round(now - since, 1), figures=figures,
                      routes=tuple(routes), route_note=note, destination_rule=rule, traffic_policy=policy,
                      authz_request=f"{method} {path}", authz=tuple(verdicts), authz_allowed=allowed,
                      authz_note=authz_note, snapshot=snapshot.hash)


__all__ = ["DENIALS_NOTE", "History", "applied_resources", "denials_view", "denied_callers", "edge_authz", "edge_detail", "edge_policy",
           "edge_routes", "instance_rows", "service_detail", "window_figures"]
