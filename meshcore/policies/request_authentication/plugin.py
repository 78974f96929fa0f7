"""RequestAuthentication: a ``jwt_authn`` filter in the inbound HTTP connection managers of every workload a
RequestAuthentication selects, before the policy filters (so AuthorizationPolicy's RBAC stages see the verified
payload), and a cluster per remote JWKS server.

Unlike AuthorizationPolicy's rules, which ride in RDS, JWT providers (issuers, keys) only exist in the filter's
listener-level config (Envoy's ``jwt_authn`` has no per-route providers): a RequestAuthentication change is a
listener update. Envoy keeps serving connections it accepted before with the old filter chain until they drain,
so on a pooled keep-alive connection a new or changed RequestAuthentication takes effect when the connection is
replaced (``drain``: Envoy's listener drain time). A workload no RequestAuthentication selects gets no filter
at all (nothing to run per request).

TCP workloads (``meta protocol=tcp``) carry no requests to read a token from: RequestAuthentication does not apply
to them, as in Istio.

Ingress gateways: a RequestAuthentication selecting an ingress gateway instance (its labels: ``app`` = the service
name, meta, tags) puts the filter first in every HTTP connection manager of the gateway's listeners (its Gateway
servers and its upstream listeners); there its providers clear the route cache, so VirtualService routes can match
the verified claims (``@request.auth.claims.<claim>``, :mod:`.claims`).
"""

from __future__ import annotations

from ... import naming
from ...catalog.definitions import INGRESS_GATEWAY
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from ...xds.generate.vocab import CLUSTER, LISTENER
from .._inbound import inbound_targets
from .jwt import JWT_AUTHN, jwks_clusters, jwt_authentication
from .schema import KIND_NAME, authentications_for
from .trust import NoTrustStore, trusted_ca

KIND = KIND_NAME


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    authentications = snapshot.resources_of(KIND)
    if not authentications:
        return
    problems: list[str] = []
    clusters = {cl.name: cl for cl in resources[CLUSTER]}
    settings = snapshot.settings.jwks

    def ca_for(uri: str) -> str:
        return trusted_ca(settings, proxy.system_ca_bundle, uri, proxy.node)

    for inst, listener, _route in inbound_targets(snapshot, proxy, resources):
        if inst.protocol == "tcp":
            continue
        selected = authentications_for(authentications, inst.labels, inst.namespace)
        config = jwt_authentication(selected, settings)
        if config is None:
            continue
        config.bypass_cors_preflight = True  # a preflight carries no token; the CORS filter answers it
        for chain, hcm in listener.http_managers():
            try:
                pf.insert_before_policy_filters(hcm, JWT_AUTHN, config)
            except ValueError as exc:
                problems.append(f"RequestAuthentication not enforceable on listener {listener.name!r} chain "
                                f"{chain.name!r}: {exc}")
        try:
            for cluster in jwks_clusters(selected, settings, ca_for):
                clusters.setdefault(cluster.name, cluster)
        except NoTrustStore as exc:
            problems.append(f"RequestAuthentication on {inst.id}: {exc}")
    try:
        for cluster in _gateways(snapshot, proxy, resources, authentications, ca_for):
            clusters.setdefault(cluster.name, cluster)
    except NoTrustStore as exc:
        problems.append(f"RequestAuthentication on the ingress gateway: {exc}")
    if problems:
        raise SnapshotInvalid(proxy.node, problems)  # fail closed: the proxy keeps its last good config
    if len(clusters) != len(resources[CLUSTER]):
        resources[CLUSTER] = [clusters[name] for name in sorted(clusters)]


def _gateways(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict, authentications, ca_for) -> list:
    """Put ``jwt_authn`` first into the HTTP connection managers of this proxy's ingress gateway listeners; the
    JWKS clusters it needs."""
    gateways = [i for i in c.local_instances(snapshot, proxy) if i.kind == INGRESS_GATEWAY]
    selected = sorted({r.key: r for inst in gateways
                       for r in authentications_for(authentications, inst.labels, inst.namespace)}.values(),
                      key=lambda r: (r.namespace, r.name))
    config = jwt_authentication(selected, snapshot.settings.jwks)
    if config is None:
        return []
    config.bypass_cors_preflight = True
    for provider in config.providers.values():
        provider.clear_route_cache = True  # routes may match the verified claims
    names = {naming.outbound_listener(up.destination_name, up.local_bind_port) for inst in gateways
             for up in inst.upstreams}
    for listener in resources[LISTENER]:
        if listener.name.startswith("gateway:") or listener.name in names:
            for _chain, hcm in listener.http_managers():
                pf.insert_first(hcm, JWT_AUTHN, config)
    return jwks_clusters(selected, snapshot.settings.jwks, ca_for)


__all__ = ["apply"]
