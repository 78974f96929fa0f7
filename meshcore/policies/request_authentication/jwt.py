"""RequestAuthentication -> Envoy ``jwt_authn`` (pure): one provider per JWT rule, one requirement that accepts a
valid token of any provider *or no token at all* (Istio's semantics: an invalid token is a 401, a missing one
passes; requiring a token is AuthorizationPolicy's job, on ``requestPrincipals``), and the clusters that
remote JWKS are fetched through.

Every provider writes the verified payload into dynamic metadata (namespace :data:`JWT_METADATA_NS`, key
:data:`PAYLOAD_KEY`), which AuthorizationPolicy's RBAC rules on ``requestPrincipals`` and ``request.auth.*``
read (:mod:`meshcore.policies.authorization_policy.rbac`). An ``Authorization`` header that carries no token of
the expected shape counts as missing, as in Envoy and Istio.
"""

from __future__ import annotations

import urllib.parse
from typing import Callable, Sequence

from google.protobuf import empty_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from ...resources.model import Resource
from ...xds.generate import vocab as c
from .discovery import UNAVAILABLE_JWKS
from .spec import JwtRule, spec_of
from .trust import NO_SETTINGS, JwksSettings

JWT_AUTHN = "envoy.filters.http.jwt_authn"
"""The filter's name; Envoy writes its dynamic metadata under the same name."""
JWT_METADATA_NS = JWT_AUTHN
PAYLOAD_KEY = "payload"
"""Where each provider puts the verified payload (``metadata[JWT_METADATA_NS][PAYLOAD_KEY]``)."""
JWKS_CACHE_S = 300.0
"""How long a fetched remote JWKS is used before it is fetched again (Istio's default refresh is 20 min; keys
rotate, so meshcore re-reads sooner)."""
JWKS_CONNECT_TIMEOUT_S = 2.0


def jwks_cluster_name(uri: str) -> str:
    """``jwks|<scheme>|<host>|<port>``: one cluster per JWKS server, shared by every rule that fetches from it."""
    parsed = urllib.parse.urlsplit(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"jwks|{parsed.scheme}|{parsed.hostname}|{port}"


def provider_name(resource: Resource, index: int) -> str:
    return f"{resource.namespace}/{resource.name}[{index}]"


def jwks_cluster(uri: str, ca_file: str = "") -> cluster_pb2.Cluster:
    """The cluster a remote JWKS is fetched through: an IP is STATIC, a name LOGICAL_DNS; ``https`` is TLS
    verified against ``ca_file`` (:func:`.trust.trusted_ca`) with the host as SNI and expected name."""
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    name = jwks_cluster_name(uri)
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(host, port)))
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if c.is_ip(host) else cluster_pb2.Cluster.LOGICAL_DNS,
        connect_timeout=c.seconds(JWKS_CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]),
    )
    if parsed.scheme == "https":
        validation = common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=ca_file))
        if not c.is_ip(host):
            validation.match_typed_subject_alt_names.add(
                san_type=common_pb2.SubjectAltNameMatcher.DNS).matcher.exact = host
        tls = tls_pb2.UpstreamTlsContext(sni="" if c.is_ip(host) else host,
                                         common_tls_context=tls_pb2.CommonTlsContext(validation_context=validation))
        cluster.transport_socket.CopyFrom(c.transport_socket("envoy.transport_sockets.tls", tls))
    return cluster


def key_source(rule: JwtRule, settings: JwksSettings | None = None) -> tuple[str | None, str | None]:
    """``(jwks_uri, inline jwks)`` of a rule: as written, else what OIDC discovery of its issuer found (a
    ``jwks_uri``), else a key set no token verifies against (discovery pending or failed: a token of that issuer is
    a 401, as Istio does while it cannot fetch the keys)."""
    if rule.jwks is not None or rule.jwks_uri is not None:
        return rule.jwks_uri, rule.jwks
    found = (settings or NO_SETTINGS).discovered_for(rule.issuer)
    if found is not None and found.jwks_uri:
        return found.jwks_uri, None
    return None, UNAVAILABLE_JWKS


def jwt_provider(rule: JwtRule, settings: JwksSettings | None = None) -> jwt_pb2.JwtProvider:
    provider = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=list(rule.audiences),
        forward=rule.forward_original_token,
        from_params=list(rule.from_params),
        from_cookies=list(rule.from_cookies),
        payload_in_metadata=PAYLOAD_KEY,
        # Space-delimited claims ("scope": "read write") become lists in the metadata RBAC and routes match.
        normalize_payload_in_metadata=jwt_pb2.JwtProvider.NormalizePayload(space_delimited_claims=rule.split_claims),
    )
    for h in rule.from_headers:
        provider.from_headers.add(name=h.name, value_prefix=h.prefix)
    if rule.output_payload_to_header:
        provider.forward_payload_header = rule.output_payload_to_header
    for out in rule.output_claim_to_headers:
        provider.claim_to_headers.add(header_name=out.header, claim_name=out.claim)
    jwks_uri, jwks = key_source(rule, settings)
    if jwks is not None:
        provider.local_jwks.inline_string = jwks
    elif jwks_uri is not None:
        provider.remote_jwks.CopyFrom(jwt_pb2.RemoteJwks(
            http_uri=http_uri_pb2.HttpUri(uri=jwks_uri, cluster=jwks_cluster_name(jwks_uri),
                                          timeout=c.seconds(rule.timeout_s)),
            cache_duration=c.seconds(JWKS_CACHE_S),
        ))
    return provider


def jwt_authentication(selected: Sequence[Resource],
                       settings: JwksSettings | None = None) -> jwt_pb2.JwtAuthentication | None:
    """The ``jwt_authn`` config for a workload the RequestAuthentications ``selected`` apply to (in (namespace,
    name) order); None when they hold no JWT rule. ``settings``: the mesh's JWKS settings (what discovery found)."""
    config = jwt_pb2.JwtAuthentication()
    names: list[str] = []
    for resource in selected:
        for i, rule in enumerate(spec_of(resource).jwt_rules):
            name = provider_name(resource, i)
            config.providers[name].CopyFrom(jwt_provider(rule, settings))
            names.append(name)
    if not names:
        return None
    requirement = jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=[
        *(jwt_pb2.JwtRequirement(provider_name=n) for n in names),
        jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()),
    ]))
    config.rules.add(match=route_components_pb2.RouteMatch(prefix="/"), requires=requirement)
    return config


def jwks_uris(selected: Sequence[Resource], settings: JwksSettings | None = None) -> dict[str, str]:
    """``{cluster name: a jwksUri fetched through it}`` for the remote JWKS of ``selected`` (written or discovered)."""
    uris = (key_source(r, settings)[0] for res in selected for r in spec_of(res).jwt_rules)
    return {jwks_cluster_name(uri): uri for uri in uris if uri is not None}


def jwks_clusters(selected: Sequence[Resource], settings: JwksSettings | None = None,
                  ca_for: Callable[[str], str] = lambda uri: "") -> list[cluster_pb2.Cluster]:
    """The clusters the remote JWKS of ``selected`` are fetched through, one per server, by name; ``ca_for(uri)``:
    the CA file an https server is verified against (:func:`.trust.trusted_ca`; may raise its
    :class:`~.trust.NoTrustStore`)."""
    uris = jwks_uris(selected, settings)
    return [jwks_cluster(uris[name], ca_for(uris[name]) if uris[name].startswith("https:") else "")
            for name in sorted(uris)]


__all__ = ["JWT_AUTHN", "JWT_METADATA_NS", "PAYLOAD_KEY", "jwt_authentication", "jwt_provider", "jwks_cluster",
           "jwks_cluster_name", "jwks_clusters", "jwks_uris", "key_source", "provider_name"]
