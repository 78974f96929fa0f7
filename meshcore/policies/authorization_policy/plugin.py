"""AuthorizationPolicy: compile Istio-style policies into Envoy RBAC rules for the inbound side of each workload.

HTTP workloads: every inbound HTTP connection manager always carries three RBAC filters with no rules
(:mod:`meshcore.xds.generate.policy_filters`: ``meshcore.authz.audit``, ``meshcore.authz.deny``,
``meshcore.authz.allow``, before the router); this plugin never touches the listener. It puts the rules
into the instance's inbound route configuration instead, as ``RBACPerRoute`` on its virtual host keyed
by those filter names, so a policy change is an RDS update that applies to the next request on every
connection, pooled keep-alive ones included. The stages, in evaluation order:

1. AUDIT: action LOG over every AUDIT policy (never blocks; its per-rule counters count matches);
2. DENY: action DENY over every DENY policy's rules (any rule matching denies);
3. ALLOW: action ALLOW over every ALLOW policy's rules, present as soon as an ALLOW policy selects the
   workload: no rule matching (or none at all) then denies.

A stage without policies gets no per-route config and passes everything. Stats:
``http.<listener>.rbac.authz.<stage>.{allowed,denied}`` and per rule
``http.<listener>.rbac.authz.<stage>.policy.<ns>/<name>[<index>].{allowed,denied}`` (the DENY stage's
per-rule counters say which DENY policy denied).

TCP workloads (``meta protocol=tcp``) keep ``envoy.filters.network.rbac`` filters in each inbound filter
chain before ``tcp_proxy`` (network filters have no per-route config): AUDIT, one DENY filter per DENY
policy in (namespace, name) order, then ALLOW (stats
``tcp.<listener>.authz.<action>[.<ns>.<name>].rbac.{allowed,denied}``). A TCP policy change is
therefore a listener update and applies to new connections; open ones keep the old policy until
Envoy drains them.

Each Envoy RBAC policy is one rule, named ``<ns>/<name>[<index>]``; a 403 carries it in the response code
details (``rbac_access_denied_matched_policy[default/deny-post[0]]``).

Dry run (annotation ``istio.io/dry-run`` or ``mesh.io/dry-run: "true"``): the policy's rules go to its stage's
``shadow_rules`` (HTTP: beside the enforced ``rules``; a stage with only dry-run policies has no ``rules`` at all, so
nothing is enforced; counted per dry-run rule as ``http.<listener>.rbac.policy.<ns>/<name>[i].shadow_{allowed,denied}``
and in sum as ``http.<listener>.rbac.shadow_{allowed,denied}``; TCP: one more network filter, prefix
``tcp.<listener>.authz.deny.dry_run.``, with shadow rules only). Evaluated and counted, never enforced.

CUSTOM (an external authorizer, :mod:`.ext_authz`): a shadow-only RBAC filter marking requests that match the CUSTOM
rules and an ``ext_authz`` filter enabled by that mark, both in the listener before the policy filters (a listener
update), the provider's cluster from the mesh settings.

Rules are read by :func:`meshcore.authz.policy_rules`, the same reading :func:`meshcore.authz.decide`
evaluates, including Istio's TCP rule (ALLOW rules using HTTP-only fields are dropped, DENY and AUDIT
rules lose those fields). ``ports`` and ``destination.port`` name the workload's own port; each
inbound listener serves one workload port, so they are resolved here, per listener.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from .._inbound import inbound_targets
from ...authz.rules import policy_rules
from ...xds.generate.vocab import CLUSTER
from ._compiled import compiled_stages
from .ext_authz import custom_rbac, ext_authz, provider_cluster
from .gateway import sidecar_problems
from .rbac import NETWORK_RBAC, RbacStage, rbac_stages
from .schema import KIND_NAME, action_of, is_dry_run, policies_for
from .spec import CUSTOM, spec_of

KIND = KIND_NAME


# --- HTTP: the rules go into the inbound route configuration ---------------------------------------


def _stat(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")



def check_http_listener(listener: c.ListenerDraft) -> list[str]:
    """Problems that would leave rules sent over RDS unenforced: an HCM without the policy filters."""
    return [f"listener {listener.name!r} chain {chain.name!r}: the HttpConnectionManager lacks the policy filters "
            f"{', '.join(pf.POLICY_FILTER_NAMES)} before its router"
            for chain, hcm in listener.http_managers() if not pf.has_policy_filters(hcm)]


def _per_route(stage: pf.HttpRbacStage, s: RbacStage) -> http_rbac_pb2.RBACPerRoute:
    """``rules`` enforced (absent when only dry-run policies select the workload: nothing enforced), ``shadow_rules``
    evaluated and counted only (dry-run policies)."""
    if s.shadow is None and s.rules is not None:
        return pf.rbac_per_route(stage, s.rules)
    rbac = http_rbac_pb2.RBAC(rules_stat_prefix=stage.stat_prefix, track_per_rule_stats=True)
    if s.rules is not None:
        rbac.rules.CopyFrom(s.rules)
    if s.shadow is not None:
        # Envoy 1.40 takes the shadow stat prefix from the listener's filter, not from per-route config: the counters
        # are http.<listener>.rbac.shadow_{allowed,denied} and, per dry-run rule, rbac.policy.<ns>/<name>[i].shadow_*.
        rbac.shadow_rules.CopyFrom(s.shadow)
    return http_rbac_pb2.RBACPerRoute(rbac=rbac)


def secure_route(route: route_pb2.RouteConfiguration, stages: list[RbacStage]) -> None:
    """Put ``stages`` into an inbound route configuration as per-filter config of its virtual hosts."""
    for s in stages:
        stage = pf.STAGE_BY_LABEL.get(s.label)
        if stage is None:
            raise ValueError(f"route {route.name!r}: RBAC stage {s.label!r} has no HTTP filter (TCP only)")
        pf.set_policy_config(route, stage.filter_name, _per_route(stage, s))


# --- TCP: network RBAC filters in the listener ----------------------------------------------------


def _network_rbac(s: RbacStage, stat_prefix: str) -> network_rbac_pb2.RBAC:
    out = network_rbac_pb2.RBAC(stat_prefix=f"tcp.{stat_prefix}.authz.{s.label}.")
    if s.rules is not None:
        out.rules.CopyFrom(s.rules)
    if s.shadow is not None:
        out.shadow_rules.CopyFrom(s.shadow)  # a filter of its own (``deny.dry_run``): its stat prefix says so
    return out


def _insert_tcp(chain: c.ChainDraft, at: int, stages: list[RbacStage], stat_prefix: str) -> None:
    chain.filters[at:at] = [c.NetworkFilter(NETWORK_RBAC, _network_rbac(s, stat_prefix)) for s in stages]


def secure_chain(chain: c.ChainDraft, stages: list[RbacStage], listener_name: str) -> None:
    """Insert ``stages`` into one inbound TCP filter chain, before its tcp_proxy."""
    where = f"listener {listener_name!r} chain {chain.name!r}"
    for i, f in enumerate(chain.filters):
        if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
            _insert_tcp(chain, i, stages, _stat(listener_name))
            return
    raise ValueError(f"{where}: no tcp_proxy to enforce AuthorizationPolicy on")


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    policies = snapshot.resources_of(KIND)
    if not policies:
        return
    problems = []
    for inst, listener, route in inbound_targets(snapshot, proxy, resources):
        selected = policies_for(policies, inst.labels, inst.namespace)
        if not selected:
            continue
        problems += sidecar_problems(selected, inst)  # remoteIpBlocks: ingress gateways only (gateway.py)
        stages = compiled_stages(policies, selected, inst, snapshot.trust_domain, rbac_stages)
        try:
            if inst.protocol == "tcp":
                problems += [f"AuthorizationPolicy {p.namespace}/{p.name}: CUSTOM (external authorization) applies to "
                             f"HTTP workloads; {inst.id} is TCP: use ALLOW or DENY rules there"
                             for p in selected if action_of(p) == CUSTOM]
                for chain in listener.filter_chains:
                    secure_chain(chain, stages, listener.name)
                continue
            if route is None:
                raise ValueError(f"no inbound route configuration {naming.inbound_route(inst.id)!r} to put the rules in")
            problems += [f"AuthorizationPolicy not enforceable: {p}" for p in check_http_listener(listener)]
            secure_route(route, stages)
            problems += custom_authorization(snapshot, inst, listener, selected, resources)
        except ValueError as exc:
            problems.append(f"AuthorizationPolicy not enforceable: {exc}")
    if problems:
        # Fail closed: a proxy whose policies cannot be enforced keeps its last good config.
        raise SnapshotInvalid(proxy.node, problems)


def custom_authorization(snapshot: MeshSnapshot, inst, listener: c.ListenerDraft, selected, resources: dict) -> list[str]:
    """CUSTOM policies selecting ``inst``: the shadow RBAC and ext_authz filters in its listener, the provider's
    cluster among ``resources``; the problems that leave them unenforceable (the proxy's config is then refused)."""
    custom = [p for p in selected if action_of(p) == CUSTOM]
    if not custom:
        return []
    where = f"CUSTOM AuthorizationPolicy on {inst.id}"
    dry = [f"{p.namespace}/{p.name}" for p in custom if is_dry_run(p)]
    if dry:
        return [f"{where}: {', '.join(dry)} carry a dry-run annotation; CUSTOM policies have no dry run (Istio's "
                "neither): remove the annotation, or try the rules as a dry-run DENY policy"]
    names = sorted({spec_of(p).provider or "" for p in custom})
    if len(names) > 1:
        return [f"{where}: the policies name providers {', '.join(names)}; one workload uses one external authorizer "
                "(as in Istio)"]
    providers = {p.name: p for p in snapshot.settings.ext_authz_providers}
    provider = providers.get(names[0])
    if provider is None:
        known = ", ".join(sorted(providers)) or "none"
        return [f"{where}: provider {names[0]!r} is not among the mesh config's extensionProviders (known: {known}); "
                "declare it with meshcore-control-plane --mesh-config"]
    rules = sorted((policy_rules(p, inst.protocol) for p in custom), key=lambda p: (p.namespace, p.name))
    try:
        for _chain, hcm in listener.http_managers():
            pf.insert_before_policy_filters(hcm, pf.AUTHZ_CUSTOM, custom_rbac(rules, inst, snapshot.trust_domain))
            pf.insert_before_policy_filters(hcm, pf.EXT_AUTHZ, ext_authz(provider))
    except ValueError as exc:
        return [f"{where}: {exc}"]
    if all(cl.name != provider.cluster for cl in resources[CLUSTER]):
        resources[CLUSTER] = sorted([*resources[CLUSTER], provider_cluster(provider)], key=lambda cl: cl.name)
    return []


__all__ = ["apply", "secure_chain", "secure_route", "check_http_listener"]
