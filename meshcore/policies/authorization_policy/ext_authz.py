"""CUSTOM AuthorizationPolicies -> Envoy ``ext_authz`` (pure), as Istio does it: the external authorizer is asked only
about requests that match a CUSTOM policy's rules.

Two filters go into the inbound HTTP connection manager of a workload CUSTOM policies select, before the policy
filters (Istio's order: CUSTOM, then DENY, then ALLOW):

1. ``meshcore.authz.custom``: an RBAC filter with the CUSTOM rules as *shadow* rules only (it never denies); a request
   matching one gets the dynamic metadata ``envoy.filters.http.rbac`` /
   ``meshcore_ext_authz_shadow_effective_policy_id`` = ``ext-authz:<ns>/<name>[<rule>]``;
2. ``envoy.filters.http.ext_authz``, enabled by that metadata only (``filter_enabled_metadata``): the provider's
   HTTP or gRPC check; a denial is the authorizer's answer (status, headers, body), an error or timeout a 403
   (``statusOnError``) unless ``failOpen``.

The provider comes from the mesh settings (:mod:`meshcore.authz.providers`); its cluster is ``ext_authz|<name>``.
Both filters live in the listener (ext_authz has no per-route server), so a CUSTOM policy change is a listener
update: connections opened before keep the old filters until Envoy drains them.
"""

from __future__ import annotations

from typing import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2

from ...authz.providers import GRPC, ExtAuthzProvider
from ...authz.rules import PolicyRules
from ...catalog.model import ServiceInstance
from ...xds.generate import vocab as c
from ...xds.generate.policy_filters import AUTHZ_CUSTOM, EXT_AUTHZ
from ...xds.generate.vocab import is_ip
from .rbac import rule_policy
from .spec import CUSTOM

SHADOW_PREFIX = "meshcore_ext_authz_"
POLICY_PREFIX = "ext-authz:"
RBAC_NS = "envoy.filters.http.rbac"


def custom_rbac(policies: Sequence[PolicyRules], instance: ServiceInstance, trust_domain: str) -> http_rbac_pb2.RBAC:
    """The shadow-only RBAC filter marking requests that match a CUSTOM rule (never denies)."""
    shadow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    for p in policies:
        for rule in p.rules:
            compiled = rule_policy(rule, instance, trust_domain, CUSTOM)
            if compiled is not None:
                shadow.policies[POLICY_PREFIX + p.rule_id(rule)].CopyFrom(compiled)
    return http_rbac_pb2.RBAC(shadow_rules=shadow, shadow_rules_stat_prefix=SHADOW_PREFIX)


def _names(names: Sequence[str]) -> string_pb2.ListStringMatcher:
    return string_pb2.ListStringMatcher(patterns=[string_pb2.StringMatcher(exact=n, ignore_case=True) for n in names])


def ext_authz(provider: ExtAuthzProvider) -> ext_authz_pb2.ExtAuthz:
    """The provider's check, enabled only for requests the CUSTOM rules marked."""
    out = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=provider.fail_open,
        status_on_error=http_status_pb2.HttpStatus(code=provider.status_on_error),  # type: ignore[arg-type]
        filter_enabled_metadata=metadata_pb2.MetadataMatcher(
            filter=RBAC_NS, path=[metadata_pb2.MetadataMatcher.PathSegment(key=SHADOW_PREFIX + "shadow_effective_policy_id")],
            value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(prefix=POLICY_PREFIX))),
    )
    if provider.kind == GRPC:
        out.grpc_service.CopyFrom(grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=provider.cluster),
            timeout=c.seconds(provider.timeout_s)))
        return out
    service = out.http_service
    service.server_uri.CopyFrom(http_uri_pb2.HttpUri(uri=f"http://{provider.service}:{provider.port}",
                                                     cluster=provider.cluster, timeout=c.seconds(provider.timeout_s)))
    service.path_prefix = provider.path_prefix
    if provider.include_request_headers:
        out.allowed_headers.CopyFrom(_names(provider.include_request_headers))
    if provider.headers_to_upstream:
        service.authorization_response.allowed_upstream_headers.CopyFrom(_names(provider.headers_to_upstream))
    if provider.headers_to_downstream:
        service.authorization_response.allowed_client_headers.CopyFrom(_names(provider.headers_to_downstream))
    return out


def provider_cluster(provider: ExtAuthzProvider) -> cluster_pb2.Cluster:
    """How Envoy reaches the authorizer: an IP is STATIC, a name STRICT_DNS; gRPC over HTTP/2."""
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(provider.service, provider.port)))
    cluster = cluster_pb2.Cluster(
        name=provider.cluster,
        type=cluster_pb2.Cluster.STATIC if is_ip(provider.service) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=c.seconds(min(provider.timeout_s, 2.0)),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=provider.cluster,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]),
    )
    if provider.kind == GRPC:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            c.pack(options))
    return cluster


__all__ = ["AUTHZ_CUSTOM", "EXT_AUTHZ", "SHADOW_PREFIX", "POLICY_PREFIX", "custom_rbac", "ext_authz",
           "provider_cluster"]

