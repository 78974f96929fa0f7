"""Sidecar ``inboundConnectionPool``: limits and connection settings towards each selected workload's own app.

Istio's ``ConnectionPoolSettings`` (the DestinationRule's ``connectionPool``, validated and parsed by the same
code) on the inbound side: the proxy's cluster to its local app (``local_app:<instance>``) gets the circuit
breaker thresholds (``maxConnections``, ``http1MaxPendingRequests``, ``http2MaxRequests``, ``maxRetries``), the
connect timeout, keepalive, connection duration and per-connection request limits, the idle timeout and the
protocol choice towards the app (:func:`meshcore.policies.destination_rule.clusters.apply_policy`); ``tcp.idleTimeout``
goes on the inbound listener's tcp_proxy of a TCP service. Callers over the limits get 503 (``upstream_rq_pending_overflow``
on the local app cluster), as with Istio's inbound cluster. An ``ingress[]`` entry's ``connectionPool`` is the pool of
the instances whose port it describes, in place of ``inboundConnectionPool`` (Istio's precedence).
"""

from __future__ import annotations

from ... import naming
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.sidecar_scope import sidecar_for
from ...xds.generate.vocab import CLUSTER, LISTENER
from ..destination_rule.clusters import apply_policy
from ..destination_rule.spec import TrafficPolicy
from ..destination_rule.tcp_options import apply_tcp, tcp_proxies
from .ingress import entry_for
from .spec import spec_of


def apply_inbound_pools(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict, sidecars) -> None:
    """Each local instance's Sidecar ``inboundConnectionPool`` on its local app cluster and inbound listener."""
    clusters = {cl.name: cl for cl in resources[CLUSTER]}
    for inst in c.sidecar_instances(snapshot, proxy):
        sidecar = sidecar_for(sidecars, inst)
        entry = entry_for(sidecars, inst)  # an ingress[] entry's connectionPool is its port's, in place of this one
        pool = entry[2].pool if entry is not None and entry[2].pool is not None else (
            spec_of(sidecar).inbound_pool if sidecar is not None else None)
        if pool is None:
            continue
        app = naming.local_app_cluster(inst.id)
        cluster = clusters.get(app)
        if cluster is not None:
            apply_policy(cluster, TrafficPolicy(connection_pool=pool))
        if pool.tcp_idle_timeout is None:
            continue
        for tcp in tcp_proxies(resources[LISTENER], naming.inbound_listener(inst.id)):
            if tcp.cluster == app:
                apply_tcp(tcp, pool.tcp_idle_timeout, None)


__all__ = ["apply_inbound_pools"]
