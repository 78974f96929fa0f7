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
from .rbac import NETWORK_RBAC, RbacStage, rbac_stages
from .schema import KIND_NAME, policies_for

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
        stages = rbac_stages(selected, inst, snapshot.trust_domain)
        try:
            if inst.protocol == "tcp":
                for chain in listener.filter_chains:
                    secure_chain(chain, stages, listener.name)
                continue
            if route is None:
                raise ValueError(f"no inbound route configuration {naming.inbound_route(inst.id)!r} to put the rules in")
            problems += [f"AuthorizationPolicy not enforceable: {p}" for p in check_http_listener(listener)]
            secure_route(route, stages)
        except ValueError as exc:
            problems.append(f"AuthorizationPolicy not enforceable: {exc}")
    if problems:
        # Fail closed: a proxy whose policies cannot be enforced keeps its last good config.
        raise SnapshotInvalid(proxy.node, problems)


__all__ = ["apply", "secure_chain", "secure_route", "check_http_listener"]
