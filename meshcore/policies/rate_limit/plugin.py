"""RateLimit: Envoy local rate limits on the inbound side of the selected workloads.

HTTP workloads: every inbound HTTP connection manager always carries a disabled
``envoy.filters.http.local_ratelimit`` filter named ``meshcore.ratelimit`` (after the RBAC filters, so
a request AuthorizationPolicy denies never takes a token; see :mod:`meshcore.xds.generate.policy_filters`).
This plugin never touches the listener: it puts the limits into the instance's inbound route
configuration, as that filter's per-route ``LocalRateLimit`` on the virtual host, so a change is an RDS
update that applies to the next request on every connection. (A new per-route config starts with full
buckets.) Inside it:

* every ``limits[i]`` is one descriptor ``meshcore_limit=<name or limits[i]>`` with its own token bucket,
  produced by a ``header_value_match`` action (``:path``, ``:method`` and, for ``sources``, the peer's
  SPIFFE ID in ``x-forwarded-client-cert``, which the inbound HttpConnectionManager sets from the
  verified client certificate and strips from anything else) or, without ``match``, a ``generic_key``;
* a request takes a token from every limit it matches; the filter's own bucket is never consumed
  (``always_consume_default_token_bucket: false``, and unlimited for requests no limit matches);
* refused requests get ``429`` with ``retry-after`` (whole seconds until an emptied bucket holds a token
  again; the largest over the limits);
* stats: ``ratelimit.<ns>.<name>.http_local_rate_limit.{ok,rate_limited,enabled,enforced}``.

Several RateLimits selecting one workload share that one filter: their limits are merged, in
(namespace, name) order, descriptor values ``<ns>/<name>/<limit>``, stats under
``ratelimit.<ns>.<name>+<name2>...`` (:func:`merged_stat_prefix`).

TCP workloads (``meta protocol=tcp``) get ``envoy.filters.network.local_ratelimit`` before the tcp_proxy,
one per limit without ``match``, limiting new connections (stats
``ratelimit.<ns>.<name>.local_rate_limit.rate_limited``); limits with a ``match`` need HTTP and are
left out there. Network filters have no per-route config, so a TCP limit change is a listener update
and applies to new connections.
"""

from __future__ import annotations

from typing import Sequence

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...errors import SnapshotInvalid
from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from .._inbound import inbound_targets
from .filters import NETWORK_LOCAL_RATELIMIT, http_local_rate_limit, network_local_rate_limits
from .schema import KIND_NAME, limits_for

KIND = KIND_NAME


# --- inserting: HTTP into the inbound route, TCP into the inbound listener ---------------------------


def limit_route(route: route_pb2.RouteConfiguration, selected: Sequence[Resource]) -> None:
    """Put ``selected``'s limits into an inbound route configuration (the ``meshcore.ratelimit`` filter's config)."""
    pf.set_policy_config(route, pf.RATELIMIT, http_local_rate_limit(selected))


def limit_chain(chain: c.ChainDraft, selected: Sequence[Resource]) -> None:
    """Add ``selected``'s connection limits to one inbound TCP filter chain, before its tcp_proxy."""
    for i, f in enumerate(chain.filters):
        if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
            chain.filters[i:i] = [c.NetworkFilter(NETWORK_LOCAL_RATELIMIT, cfg)
                                  for r in selected for cfg in network_local_rate_limits(r)]
            return


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    limits = snapshot.resources_of(KIND)
    if not limits:
        return
    problems = []
    for inst, listener, route in inbound_targets(snapshot, proxy, resources):
        selected = sorted(limits_for(limits, inst.labels, inst.namespace), key=lambda r: (r.namespace, r.name))
        if not selected:
            continue
        if inst.protocol == "tcp":
            for chain in listener.filter_chains:
                limit_chain(chain, selected)
            continue
        if route is None:
            problems.append(f"RateLimit not enforceable: no inbound route configuration "
                            f"{naming.inbound_route(inst.id)!r} for instance {inst.id}")
            continue
        limit_route(route, selected)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)


__all__ = ["apply", "limit_chain", "limit_route"]
