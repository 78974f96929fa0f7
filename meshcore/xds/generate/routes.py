"""Routes: inbound to the local app, outbound to each upstream's cluster (HTTP services only)."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2

from ... import naming
from ...authz.patterns import PATH_PARAMETER_RE2
from ...snapshot import MeshSnapshot, ProxyInfo
from . import vocab as c
from ._safe_retries import with_safe_methods_route

DEFAULT_ROUTE_TIMEOUT_S = 15.0

# Istio's default retry policy for every mesh route a VirtualService does not give ``retries`` to: 2 retries on
# failures where the request never reached the app (connect failure, a stream refused or reset before any of
# the request went out, gRPC unavailable/cancelled) or the upstream proxy answered 503 (its app is down), each
# retry to another host than the ones already tried. ``reset-before-request`` is meshcore's addition (Envoy
# >= 1.30): safe for every method, nothing was sent; a reset after the request went out is not retried (it may
# have been processed).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,reset-before-request,retriable-status-codes"
DEFAULT_RETRY_STATUS_CODES = (503,)
DEFAULT_RETRIES = 2
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5


def retry_to_other_hosts(policy: rc.RetryPolicy) -> rc.RetryPolicy:
    """Make each retry of ``policy`` pick a host not tried yet (Envoy's previous_hosts predicate, as Istio does)."""
    del policy.retry_host_predicate[:]
    policy.retry_host_predicate.append(rc.RetryPolicy.RetryHostPredicate(
        name=PREVIOUS_HOSTS, typed_config=c.pack(previous_hosts_pb2.PreviousHostsPredicate())))
    policy.host_selection_retry_max_attempts = HOST_SELECTION_RETRY_MAX_ATTEMPTS
    return policy


def default_retry_policy() -> rc.RetryPolicy:
    """The retry policy of every generated route without a VirtualService ``retries`` (see the constants above)."""
    return retry_to_other_hosts(rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON, num_retries=wrappers_pb2.UInt32Value(value=DEFAULT_RETRIES),
        retriable_status_codes=DEFAULT_RETRY_STATUS_CODES))


def _single_route(name: str, vhost: str, cluster: str, timeout: float | None, *,
                  retries: bool) -> route_pb2.RouteConfiguration:
    action = rc.RouteAction(cluster=cluster)
    if timeout is not None:
        action.timeout.CopyFrom(c.seconds(timeout))
    if retries:
        action.retry_policy.CopyFrom(default_retry_policy())
    routes = [rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)]
    if retries:  # safe methods also retried after a reset mid-request (_safe_retries)
        routes = with_safe_methods_route(routes)
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[rc.VirtualHost(name=vhost, domains=["*"], routes=routes)],
        validate_clusters=wrappers_pb2.BoolValue(value=False),
    )


PATH_PARAMETERS_ROUTE = "path-parameters"
PATH_PARAMETERS_BODY = ("path parameters (';' or %3B in the path) are not allowed in this mesh "
                        "(control plane setting --allow-path-parameters)\n")


def reject_path_parameters() -> rc.Route:
    """The first route of every inbound route configuration unless the mesh allows path parameters: a path with
    ``;`` (or ``%3B``) before its query gets 400 and never reaches the app. Envoy does not strip path parameters
    and RBAC matches the path as sent, so ``/admin;x`` would pass a DENY on ``/admin`` that an app reading
    ``/admin`` still serves. The RBAC filters run first (a request they deny still gets 403)."""
    return rc.Route(
        name=PATH_PARAMETERS_ROUTE,
        match=rc.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=PATH_PARAMETER_RE2)),
        direct_response=rc.DirectResponseAction(status=400,
                                                body=base_pb2.DataSource(inline_string=PATH_PARAMETERS_BODY)),
    )


def build_routes(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[route_pb2.RouteConfiguration]:
    routes = []
    for inst in c.sidecar_instances(snapshot, proxy):
        if inst.protocol == "tcp":
            continue
        # The caller's route owns the timeout and the retries (to another instance); inbound passes the request
        # through as long as it lasts, once.
        inbound = _single_route(naming.inbound_route(inst.id), inst.service, naming.local_app_cluster(inst.id), 0,
                                retries=False)
        if not snapshot.settings.allow_path_parameters:
            inbound.virtual_hosts[0].routes.insert(0, reject_path_parameters())
        routes.append(inbound)
    for src, up in c.outbound_bindings(snapshot, proxy):
        if c.upstream_protocol(snapshot, up) == "tcp":
            continue
        routes.append(_single_route(
            naming.outbound_route(up.destination_name, up.local_bind_port), up.destination_name,
            naming.upstream_cluster(up.destination_name, src.service), DEFAULT_ROUTE_TIMEOUT_S, retries=True,
        ))
    return sorted(routes, key=lambda r: r.name)
