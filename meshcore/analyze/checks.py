"""The checks of ``meshctl analyze`` (pure): resources plus a catalog in, findings out.

Each check reads the validated resources (the applied set plus the files given) and the Consul catalog, never the
network; :func:`analyze` runs them all in :data:`CHECKS` order. Codes:

====== ======== =====================================================================================
code   severity what
====== ======== =====================================================================================
MC0001 error    a cross-resource check ``apply`` runs fails (undefined subset, a host with two
                VirtualServices or DestinationRules): the set would be refused
MC0101 error    a VirtualService or DestinationRule host is no service of the catalog
MC0102 error    a route or mirror destination is no service of the catalog
MC0103 warning  a DestinationRule subset's labels select no instance of its host (routes to it get 503)
MC0104 warning  a selector (AuthorizationPolicy, PeerAuthentication, RateLimit) matches no workload
MC0105 warning  PeerAuthentications compete at one level (mesh, namespace, workload): all but the first are inert
MC0108 error    a Sidecar's ingress[] does not fit an instance it selects (no entry or two for its port, a bind
                not of its VM, tls on a STRICT port, ...): that proxy's config is refused
MC0201 warning  a VirtualService rule can never be reached: an earlier rule matches every request, or the
                same requests
MC0202 warning  a delegate VirtualService's rule fits inside no delegating rule's match: it is left out
MC0301 warning  an AuthorizationPolicy rule can never match: its ports are none of the selected workloads'
MC0302 warning  an ALLOW rule of a TCP workload uses HTTP-only fields: Istio's TCP rule drops it
MC0303 error    an AuthorizationPolicy with remoteIpBlocks / remote.ip selects sidecars (honoured at ingress
                gateways only): those proxies' config is refused
MC0501 error    an issuer's OpenID Connect discovery fails (the control plane's status): its tokens get 401
MC0401 warning  a VirtualService routes a host no workload declares as an upstream: no proxy uses its routes
MC0402 warning  a workload declares an upstream that is no service of the catalog
====== ======== =====================================================================================
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..catalog.model import Catalog, ServiceInstance
from ..resources.kinds._fields import ROOT_NAMESPACE
from ..resources.model import Resource
from ._finding import ERROR, WARNING, Finding

Check = Callable[[Sequence[Resource], Catalog], Iterable[Finding]]

_SELECTOR_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RateLimit", "RequestAuthentication")


def _of(resources: Sequence[Resource], kind: str) -> list[Resource]:
    return sorted((r for r in resources if r.kind == kind), key=lambda r: (r.namespace, r.name))


def _services(catalog: Catalog) -> set[str]:
    return set(catalog.service_names())


def _entry_hosts(resources: Sequence[Resource]) -> set[str]:
    """The hosts ServiceEntries declare: services outside the mesh, known without a catalog entry."""
    return {h for r in _of(resources, "ServiceEntry") for h in (r.spec or {}).get("hosts") or ()}


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _missing_host(host: str, catalog: Catalog) -> str:
    known = ", ".join(sorted(_services(catalog))[:8]) or "none"
    return f"register {json.dumps(host)} in Consul or name one of the catalog's services ({known})"


def set_checks(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0001: what ``apply`` would refuse across resources (the same :func:`validate_set`)."""
    from ..resources.loader import validate_set

    for e in validate_set(resources):
        yield Finding("MC0001", ERROR, e.source, e.path, e.message, "fix it before applying: apply refuses this set")


def hosts(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0101 / MC0102: hosts and destinations that name no service."""
    from ..policies.virtual_service.schema import destinations

    services = _services(catalog) | _entry_hosts(resources)
    for r in _of(resources, "VirtualService"):
        spec = r.spec or {}
        for_mesh = "mesh" in (spec.get("gateways") or ["mesh"])  # a Gateway's hosts are external names
        for i, host in enumerate(spec.get("hosts") or ()):
            if for_mesh and host not in services:
                yield Finding("MC0101", ERROR, str(r.key), f"spec.hosts[{i}]",
                              f"host {json.dumps(host)} is no service of the catalog", _missing_host(host, catalog))
        for path, dest in destinations(spec):
            if dest["host"] not in services:
                yield Finding("MC0102", ERROR, str(r.key), f"{path}.host",
                              f"destination {json.dumps(dest['host'])} is no service of the catalog: requests "
                              "routed there fail", _missing_host(dest["host"], catalog))
    for r in _of(resources, "DestinationRule"):
        host = (r.spec or {}).get("host")
        if host and host not in services:
            yield Finding("MC0101", ERROR, str(r.key), "spec.host",
                          f"host {json.dumps(host)} is no service of the catalog", _missing_host(host, catalog))


def subsets(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0103: subsets whose labels select no instance of their host."""
    services = _services(catalog)
    for r in _of(resources, "DestinationRule"):
        spec = r.spec or {}
        host = spec.get("host")
        if host not in services:
            continue  # MC0101 says so
        instances = catalog.instances_of(host)
        for i, subset in enumerate(spec.get("subsets") or ()):
            labels = subset.get("labels") or {}
            if not any(_labels_match(labels, inst.labels) for inst in instances):
                versions = sorted({inst.labels.get("version", "") for inst in instances} - {""})
                yield Finding("MC0103", WARNING, str(r.key), f"spec.subsets[{i}].labels",
                              f"subset {json.dumps(subset['name'])} selects no instance of {json.dumps(host)}: "
                              "traffic routed to it gets 503 (no healthy upstream)",
                              f"its instances carry version {', '.join(versions) or 'none'}; fix the labels or "
                              "register the instances")


def _selector(r: Resource) -> dict[str, str]:
    return dict(((r.spec or {}).get("selector") or {}).get("matchLabels") or {})


def _selected(r: Resource, catalog: Catalog) -> list[ServiceInstance]:
    selector = _selector(r)
    if not selector and r.namespace == ROOT_NAMESPACE:
        return list(catalog.instances)
    return [i for i in catalog.instances if i.namespace == r.namespace and _labels_match(selector, i.labels)]


def selectors(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0104: selector policies that apply to no workload."""
    for kind in _SELECTOR_KINDS:
        for r in _of(resources, kind):
            if _selected(r, catalog):
                continue
            selector = _selector(r)
            if selector:
                what = "spec.selector.matchLabels", f"no workload in namespace {r.namespace!r} has the labels {selector}"
            else:
                what = "metadata.namespace", f"no workload runs in namespace {r.namespace!r}"
            yield Finding("MC0104", WARNING, str(r.key), what[0], f"{what[1]}: the {kind} applies to nothing",
                          f"check the labels and namespace (mesh-wide: namespace {ROOT_NAMESPACE} without a selector)")


def competing_peer_authentications(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0105: PeerAuthentications competing at one level (mesh-wide, namespace-wide, or one workload): only the
    one whose name sorts first counts (Istio: the oldest), the others are silently inert."""
    levels: dict[tuple[str, str], list[Resource]] = {}
    for r in _of(resources, "PeerAuthentication"):
        selector = _selector(r)
        if selector:
            continue  # selector overlaps are per workload: below
        levels.setdefault(("mesh" if r.namespace == ROOT_NAMESPACE else "namespace", r.namespace), []).append(r)
    for (level, ns), found in sorted(levels.items()):
        for r in found[1:]:
            yield Finding("MC0105", WARNING, str(r.key), "metadata.name",
                          f"{len(found)} {level}-wide PeerAuthentications in {ns!r}: only {found[0].name!r} (first by "
                          "name) applies, this one never does", "merge them into one")
    for inst in sorted(catalog.instances, key=lambda i: i.id):
        hits = [r for r in _of(resources, "PeerAuthentication")
                if _selector(r) and r.namespace == inst.namespace and _labels_match(_selector(r), inst.labels)]
        for r in hits[1:]:
            yield Finding("MC0105", WARNING, str(r.key), "spec.selector.matchLabels",
                          f"instance {inst.id} is selected by {len(hits)} PeerAuthentications: only {hits[0].name!r} "
                          "(first by name) applies to it", "make the selectors disjoint or merge the policies")


def _match_key(match: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in match.items() if k != "name"}, sort_keys=True)


def shadowed_routes(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0201: rules after a catch-all, and match alternatives already taken by an earlier rule."""
    for r in _of(resources, "VirtualService"):
        seen: dict[str, int] = {}
        catch_all: int | None = None
        for i, rule in enumerate((r.spec or {}).get("http") or ()):
            if catch_all is not None:
                yield Finding("MC0201", WARNING, str(r.key), f"spec.http[{i}]",
                              f"never reached: http[{catch_all}] has no match and takes every request",
                              f"move http[{catch_all}] last, or give it a match")
                continue
            matches = rule.get("match") or []
            if not matches or any(_match_key(m) == "{}" for m in matches):
                catch_all = i
            for j, m in enumerate(matches):
                key = _match_key(m)
                if key in seen:
                    yield Finding("MC0201", WARNING, str(r.key), f"spec.http[{i}].match[{j}]",
                                  f"never matched: http[{seen[key]}] has the same match and comes first",
                                  "remove it or merge the two rules")
                else:
                    seen[key] = i


_HTTP_FIELDS = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")


def _policy_ports(inst: ServiceInstance, resources: Sequence[Resource]) -> list[int]:
    """The ports ``ports`` / ``destination.port`` name on ``inst``: a service's own, an ingress gateway's listeners'."""
    from ..catalog.definitions import INGRESS_GATEWAY
    from ..policies.authorization_policy.gateway import listener_ports

    return listener_ports(resources, inst) if inst.kind == INGRESS_GATEWAY else [inst.port]


def never_matching_policies(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0301 / MC0302: AuthorizationPolicy rules that can never match the workloads they select."""
    for r in _of(resources, "AuthorizationPolicy"):
        selected = _selected(r, catalog)
        if not selected:
            continue  # MC0104
        ports = {str(p) for i in selected for p in _policy_ports(i, resources)}
        action = (r.spec or {}).get("action") or "ALLOW"
        tcp_only = all(i.protocol == "tcp" for i in selected)
        for i, rule in enumerate((r.spec or {}).get("rules") or ()):
            for j, to in enumerate(rule.get("to") or ()):
                op = to.get("operation") or {}
                wanted = [str(p) for p in op.get("ports") or ()]
                if wanted and not ports.intersection(wanted):
                    yield Finding("MC0301", WARNING, str(r.key), f"spec.rules[{i}].to[{j}].operation.ports",
                                  f"ports {', '.join(wanted)} are none of the selected workloads' ports "
                                  f"({', '.join(sorted(ports))}): the rule never matches",
                                  "ports name the service's own port as registered in Consul")
                used = [f for f in _HTTP_FIELDS if f in op]
                if tcp_only and action == "ALLOW" and used:
                    yield Finding("MC0302", WARNING, str(r.key), f"spec.rules[{i}].to[{j}].operation.{used[0]}",
                                  "the selected workloads are TCP: an ALLOW rule with HTTP-only fields "
                                  f"({', '.join(used)}) is dropped (Istio's rule), so it never allows anything",
                                  "use ports, principals, namespaces or ipBlocks for TCP services")


def remote_ip_on_sidecars(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0303: remoteIpBlocks on a policy that selects sidecars (their config would be refused)."""
    from ..policies.authorization_policy.gateway import uses_remote_ip

    for r in _of(resources, "AuthorizationPolicy"):
        sidecars = sorted(i.id for i in _selected(r, catalog) if i.kind == "")
        if sidecars and uses_remote_ip(r):
            yield Finding("MC0303", ERROR, str(r.key), "spec.rules",
                          f"remoteIpBlocks / remote.ip are honoured at ingress gateways only, and the policy selects "
                          f"sidecars ({', '.join(sidecars[:5])}{', ...' if len(sidecars) > 5 else ''}): their proxies' "
                          "config is refused", "select the ingress gateway only, or use ipBlocks (the peer's address)")


def discovery_failures(resources: Sequence[Resource], failures: Mapping[str, str]) -> Iterable[Finding]:
    """MC0501: issuers whose OpenID Connect discovery fails (``failures``: issuer -> error, from the control
    plane's status source ``oidc-discovery``), at each RequestAuthentication rule naming them."""
    for r in _of(resources, "RequestAuthentication"):
        for i, rule in enumerate((r.spec or {}).get("jwtRules") or ()):
            error = failures.get(rule.get("issuer"))
            if error and not rule.get("jwksUri") and not rule.get("jwks"):
                yield Finding("MC0501", ERROR, str(r.key), f"spec.jwtRules[{i}].issuer",
                              f"OpenID Connect discovery of {rule['issuer']} fails: {error}",
                              "make <issuer>/.well-known/openid-configuration reachable from the control plane "
                              "(its CA: jwks.discovery.caCertificates in the mesh config), or write jwksUri")


def upstreams(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0401 / MC0402: routes no proxy uses, and upstreams that name nothing."""
    services = _services(catalog) | _entry_hosts(resources)
    declared = {u.destination_name for inst in catalog.instances for u in inst.upstreams}
    for r in _of(resources, "VirtualService"):
        for i, host in enumerate((r.spec or {}).get("hosts") or ()):
            if host in services and host not in declared:
                yield Finding("MC0401", WARNING, str(r.key), f"spec.hosts[{i}]",
                              f"no workload declares {json.dumps(host)} as an upstream: no proxy uses these routes",
                              "add it to the callers' upstreams (Consul connect sidecar proxy upstreams)")
    for inst in sorted(catalog.instances, key=lambda x: x.id):
        for u in inst.upstreams:
            if u.destination_name not in services:
                yield Finding("MC0402", WARNING, f"service/{inst.service}", f"instance {inst.id} upstream "
                              f"{u.destination_name}", f"upstream {json.dumps(u.destination_name)} is no service of "
                              "the catalog: calls to it fail", "register the service or remove the upstream")


def gateways(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0106 / MC0107: Gateways that select no ingress gateway, VirtualServices bound to a Gateway that is not there."""
    from ..catalog.definitions import INGRESS_GATEWAY
    from ..policies.gateway.schema import gateway_ref
    from ..policies.gateway.spec import spec_of as gateway_spec

    ingress = [i for i in catalog.instances if i.kind == INGRESS_GATEWAY]
    known = {f"{r.namespace}/{r.name}" for r in _of(resources, "Gateway")}
    for r in _of(resources, "Gateway"):
        selector = dict((r.spec or {}).get("selector") or {})
        if not any(gateway_spec(r).selects(i.labels) for i in ingress):
            yield Finding("MC0106", WARNING, str(r.key), "spec.selector",
                          f"no ingress gateway has the labels {selector}: the Gateway serves nothing",
                          "select the gateway's labels: app (its service name, e.g. ingress-gateway), meta, tag:<tag>")
    for r in _of(resources, "VirtualService"):
        for i, g in enumerate((r.spec or {}).get("gateways") or ()):
            if g != "mesh" and gateway_ref(r.namespace, g) not in known:
                yield Finding("MC0107", WARNING, str(r.key), f"spec.gateways[{i}]",
                              f"no Gateway {gateway_ref(r.namespace, g)}: these routes are served nowhere",
                              "apply the Gateway, or name it as <namespace>/<name>")


def dropped_delegate_rules(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0202: delegate rules whose match no root rule's match contains (Istio's merge drops them)."""
    from ..policies.virtual_service.delegation import dropped_rules

    for delegate, j, root, i in dropped_rules(resources):
        yield Finding("MC0202", WARNING, str(delegate.key), f"spec.http[{j}].match",
                      f"never used: it fits inside no match of {root.key} spec.http[{i}], which delegates here",
                      "narrow the match to within the root rule's (a uri prefix under its prefix, ...), or widen the "
                      "root's")


def sidecar_ingress(resources: Sequence[Resource], catalog: Catalog) -> Iterable[Finding]:
    """MC0108: what the Sidecar plugin refuses of an ingress[] entry (meshcore.policies.sidecar.ingress)."""
    from ..policies.sidecar.ingress import ingress_findings

    return ingress_findings(resources, catalog)


CHECKS: tuple[Check, ...] = (set_checks, hosts, subsets, selectors, competing_peer_authentications, shadowed_routes,
                             dropped_delegate_rules, never_matching_policies, remote_ip_on_sidecars, upstreams,
                             gateways, sidecar_ingress)


def analyze(resources: Sequence[Resource], catalog: Catalog) -> list[Finding]:
    """Every finding over ``resources`` (validated) against ``catalog``: errors first, then by resource and path."""
    found = [f for check in CHECKS for f in check(resources, catalog)]
    return sorted(found, key=lambda f: (f.severity != ERROR, f.resource, f.path, f.code))


__all__ = ["CHECKS", "analyze", "discovery_failures"]
