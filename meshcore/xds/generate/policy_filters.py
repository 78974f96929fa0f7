"""The HTTP policy filters every inbound (and outbound) HTTP connection manager carries, whatever the policies are.

Why: a change to a listener's filters is a *listener* update, and Envoy keeps serving the connections
it accepted before the update with the old filter chain until they drain, so a new DENY would not be
enforced on pooled keep-alive connections. meshcore therefore puts a constant set of policy filters
into every inbound HTTP connection manager, each under its own name and with a listener-level
config that does nothing, and sends the actual rules in the inbound route configuration (RDS) as
``typed_per_filter_config`` on its virtual host, keyed by these names. A policy change is then a
route update only, which Envoy applies to the next request on every connection.

Cheap where no policy applies: each constant filter is ``disabled`` in the connection manager, so Envoy does
not even create it for a request, and the per-route config that brings rules wraps them in a
``config.route.v3.FilterConfig`` (``disabled`` false), which turns the filter on for that virtual host or route
only (Envoy's route-based filter chain). Still a route update, still the next request on every connection.
Read a per-route config back with :func:`per_filter_config`.

Order (before the router): AUDIT (RBAC action LOG), DENY (every DENY policy), ALLOW (every ALLOW
policy), then the local rate limit (a denied request takes no token).

What Envoy 1.40 does with them (checked against a real Envoy, see ``tests/policies``):

* per-route configs are looked up by the filter's *name*, so the distinct names keep the stages apart;
* RBAC counters are named after the listener-level ``rules_stat_prefix``
  (``http.<hcm>.rbac.authz.<stage>.{allowed,denied}``), per-rule counters
  (``...authz.<stage>.policy.<rule>.{allowed,denied}``) follow the per-route ``track_per_rule_stats``;
* RBAC dynamic metadata stays in the ``envoy.filters.http.rbac`` namespace whatever the filter's name,
  its keys prefixed by the *per-route* ``rules_stat_prefix``: both prefixes are therefore the same;
* a local rate limit per-route config replaces the listener's whole config (its own ``stat_prefix``
  and buckets); the listener-level one has no bucket and is disabled, so it passes everything.

Outbound, the same idea for VirtualService fault injection: every outbound HTTP connection manager
(sidecars' and the ingress gateway's) carries one fault filter named :data:`FAULT` (disabled until a route
turns it on), right before the router, whose listener-level ``HTTPFault`` is empty (no delay, no abort, no header-controlled fault:
it injects nothing). A VirtualService rule's fault goes on its outbound *route* as
``typed_per_filter_config[FAULT]``; Envoy uses the most specific per-route ``HTTPFault`` *instead of*
the listener-level one (no merging), so adding, changing or removing a fault is a route update only.
Fault counters keep their names (``http.<hcm stat_prefix>.fault.{aborts,delays}_injected``): the
filter's name is not part of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from .vocab import pack

AUTHZ_AUDIT = "meshcore.authz.audit"
AUTHZ_DENY = "meshcore.authz.deny"
AUTHZ_ALLOW = "meshcore.authz.allow"
RATELIMIT = "meshcore.ratelimit"
FAULT = "meshcore.fault"
AUTHZ_CUSTOM = "meshcore.authz.custom"
"""CUSTOM AuthorizationPolicies' shadow-only RBAC (marks requests for ext_authz); only where CUSTOM policies apply."""
EXT_AUTHZ = "envoy.filters.http.ext_authz"
"""The fault filter of every outbound HTTP connection manager (faults come per route)."""
RBAC_METADATA_NS = "envoy.filters.http.rbac"
"""Where Envoy 1.40 writes every HTTP RBAC filter's dynamic metadata, whatever the filter is named."""
RATELIMIT_OFF_STAT_PREFIX = "ratelimit.off"
"""Stat prefix of the listener-level (disabled) rate limit: it never counts anything."""


@dataclass(frozen=True)
class HttpRbacStage:
    """One always-present RBAC filter: its name, stage label and ``rules_stat_prefix`` (stats and metadata keys)."""

    filter_name: str
    label: str  # "audit" | "deny" | "allow"

    @property
    def stat_prefix(self) -> str:
        return f"authz.{self.label}."


AUDIT_STAGE = HttpRbacStage(AUTHZ_AUDIT, "audit")
DENY_STAGE = HttpRbacStage(AUTHZ_DENY, "deny")
ALLOW_STAGE = HttpRbacStage(AUTHZ_ALLOW, "allow")
RBAC_STAGES: tuple[HttpRbacStage, ...] = (AUDIT_STAGE, DENY_STAGE, ALLOW_STAGE)
"""In evaluation order. AUDIT never blocks; DENY then ALLOW enforce."""
STAGE_BY_LABEL = {s.label: s for s in RBAC_STAGES}
POLICY_FILTER_NAMES: tuple[str, ...] = tuple(s.filter_name for s in RBAC_STAGES) + (RATELIMIT,)


def inbound_policy_filters() -> list[hcm_pb2.HttpFilter]:
    """The constant, do-nothing policy filters of an inbound HTTP connection manager (before its router)."""
    filters = [
        # No ``rules``: no engine, every request passes until a route brings rules (and turns the filter on).
        hcm_pb2.HttpFilter(name=s.filter_name, disabled=True,
                           typed_config=pack(http_rbac_pb2.RBAC(rules_stat_prefix=s.stat_prefix)))
        for s in RBAC_STAGES
    ]
    # No token bucket and filter_enabled unset (0%): passes everything even where a route turns it on unconfigured.
    filters.append(hcm_pb2.HttpFilter(
        name=RATELIMIT, disabled=True,
        typed_config=pack(http_rl_pb2.LocalRateLimit(stat_prefix=RATELIMIT_OFF_STAT_PREFIX))))
    return filters


def enabled_config(message: Message) -> any_pb2.Any:
    """``message`` as the per-route config of a constant filter: wrapped so that it turns the filter on."""
    return pack(route_components_pb2.FilterConfig(config=pack(message)))


def per_filter_config(packed: any_pb2.Any, cls: type[Message]) -> Message | None:
    """The ``cls`` message a constant filter's per-route config carries (see :func:`enabled_config`), or None."""
    wrapper = route_components_pb2.FilterConfig()
    if packed.Unpack(wrapper):
        packed = wrapper.config
    message = cls()
    return message if packed.Unpack(message) else None


def rbac_per_route(stage: HttpRbacStage, rules) -> http_rbac_pb2.RBACPerRoute:
    """The per-route config of one RBAC stage: ``rules`` (an ``envoy.config.rbac.v3.RBAC``) with its counters."""
    return http_rbac_pb2.RBACPerRoute(rbac=http_rbac_pb2.RBAC(
        rules=rules, rules_stat_prefix=stage.stat_prefix, track_per_rule_stats=True))


def set_policy_config(route: route_pb2.RouteConfiguration, filter_name: str, message: Message) -> None:
    """Put ``message`` as ``filter_name``'s config on every virtual host of ``route`` (in place)."""
    if filter_name not in POLICY_FILTER_NAMES:
        raise ValueError(f"{filter_name!r} is not one of the inbound policy filters {POLICY_FILTER_NAMES}")
    for vhost in route.virtual_hosts:
        vhost.typed_per_filter_config[filter_name].CopyFrom(enabled_config(message))


def has_policy_filters(hcm: hcm_pb2.HttpConnectionManager) -> bool:
    """True when ``hcm`` carries every policy filter, in order, before its router."""
    names = [f.name for f in hcm.http_filters]
    ours = [n for n in names if n in POLICY_FILTER_NAMES]
    return ours == list(POLICY_FILTER_NAMES) and names[-1] not in POLICY_FILTER_NAMES


def insert_before_policy_filters(hcm: hcm_pb2.HttpConnectionManager, name: str, config: Message) -> None:
    """Put an enabled filter ``name`` right before the policy filters of an inbound ``hcm`` (in place), so the RBAC
    stages see what it wrote (RequestAuthentication's ``jwt_authn`` and its verified payload). Replaces a filter of
    that name already there. ValueError when ``hcm`` lacks the policy filters (its policies would not run)."""
    names = [f.name for f in hcm.http_filters]
    if name in names:
        del hcm.http_filters[names.index(name)]
        names.remove(name)
    if AUTHZ_AUDIT not in names:
        raise ValueError(f"the HttpConnectionManager lacks the policy filters {', '.join(POLICY_FILTER_NAMES)}")
    # CUSTOM's filters (ext_authz) are policy filters too: anything else (jwt_authn) goes before them.
    ahead = (AUTHZ_AUDIT,) if name in (AUTHZ_CUSTOM, EXT_AUTHZ) else (AUTHZ_CUSTOM, AUTHZ_AUDIT)
    at = min(names.index(n) for n in ahead if n in names)
    hcm.http_filters.insert(at, hcm_pb2.HttpFilter(name=name, typed_config=pack(config)))


def insert_first(hcm: hcm_pb2.HttpConnectionManager, name: str, config: Message) -> None:
    """Put an enabled filter ``name`` first in ``hcm`` (in place; replaces one of that name): an ingress gateway's
    ``jwt_authn``, before CORS and faults, so routes and the filters after it see the verified token."""
    names = [f.name for f in hcm.http_filters]
    if name in names:
        del hcm.http_filters[names.index(name)]
    hcm.http_filters.insert(0, hcm_pb2.HttpFilter(name=name, typed_config=pack(config)))


# --- outbound: fault injection -----------------------------------------------------------------------


def outbound_policy_filters() -> list[hcm_pb2.HttpFilter]:
    """The constant filters of an outbound HTTP connection manager (before its router): the empty fault filter."""
    return [hcm_pb2.HttpFilter(name=FAULT, disabled=True, typed_config=pack(fault_pb2.HTTPFault()))]


def set_fault_config(route: route_components_pb2.Route, fault: fault_pb2.HTTPFault) -> None:
    """Give ``route`` its own fault (in place); it replaces the listener's empty one for that route."""
    route.typed_per_filter_config[FAULT].CopyFrom(enabled_config(fault))


def has_fault_filter(hcm: hcm_pb2.HttpConnectionManager) -> bool:
    """True when ``hcm`` carries the fault filter before its router (faults sent per route take effect)."""
    names = [f.name for f in hcm.http_filters]
    return FAULT in names and names[-1] != FAULT


__all__ = [
    "FAULT", "outbound_policy_filters", "set_fault_config", "has_fault_filter",
    "AUTHZ_AUDIT", "AUTHZ_DENY", "AUTHZ_ALLOW", "RATELIMIT", "RBAC_METADATA_NS", "RATELIMIT_OFF_STAT_PREFIX",
    "HttpRbacStage", "AUDIT_STAGE", "DENY_STAGE", "ALLOW_STAGE", "RBAC_STAGES", "STAGE_BY_LABEL",
    "POLICY_FILTER_NAMES", "inbound_policy_filters", "rbac_per_route", "set_policy_config", "has_policy_filters",
    "enabled_config", "per_filter_config", "insert_before_policy_filters", "insert_first", "AUTHZ_CUSTOM", "EXT_AUTHZ",
]
