"""The policy plugins, registered explicitly: :data:`PLUGINS` is the one declaration of their order.

The composer (:mod:`meshcore.compose`) runs them after the per-type generators. A plugin is a pure
function ``apply(snapshot, proxy, resources) -> None`` that edits ``resources`` in place.
"""

from __future__ import annotations

from typing import Callable

from ..snapshot import MeshSnapshot, ProxyInfo
from . import telemetry
from .authorization_policy import gateway as gateway_authorization
from .authorization_policy import plugin as authorization_policy
from .destination_rule import plugin as destination_rule
from .gateway import plugin as gateway
from .peer_authentication import plugin as peer_authentication
from .rate_limit import plugin as rate_limit
from .request_authentication import plugin as request_authentication
from .service_entry import plugin as service_entry
from .sidecar import plugin as sidecar
from .virtual_service import plugin as virtual_service

Plugin = Callable[[MeshSnapshot, ProxyInfo, dict], None]

PLUGINS: tuple[tuple[str, Plugin], ...] = (
    # First: the plaintext chains it adds carry the same filters, so the inbound plugins below see them too.
    ("PeerAuthentication", peer_authentication.apply),
    ("AuthorizationPolicy", authorization_policy.apply),
    # Before DestinationRule and VirtualService: upstreams naming a ServiceEntry host get its cluster (which those
    # then shape and route to), and the Sidecar's egress listeners exist.
    ("ServiceEntry", service_entry.apply),
    ("Sidecar", sidecar.apply),
    # Before VirtualService, which replaces the routes DestinationRule gave the host's default hash policy
    # with its own rules (each with its destination's hash policy).
    ("DestinationRule", destination_rule.apply),
    ("VirtualService", virtual_service.apply),
    # After VirtualService: an ingress gateway's Gateway servers routed by the VirtualServices bound to them.
    ("Gateway", gateway.apply),
    # After Gateway (its listeners exist), before RequestAuthentication (whose jwt_authn goes first anyway): the
    # AuthorizationPolicies selecting an ingress gateway, on its listeners (the same kind's second step).
    ("AuthorizationPolicy", gateway_authorization.apply_all),
    # After PeerAuthentication (its plaintext chains get the jwt_authn filter too) and Gateway (an ingress gateway's
    # listeners get it too); the filter goes before the policy filters, so the RBAC rules read the verified token.
    ("RequestAuthentication", request_authentication.apply),
    # After AuthorizationPolicy: its network filter goes right before tcp_proxy, behind RBAC, so a denied
    # connection takes no token.
    ("RateLimit", rate_limit.apply),
    # Last: access logs and tracing see every chain and RBAC filter the plugins above put in.
    ("Telemetry", telemetry.apply),
)
"""Every plugin, in the order it runs."""


def apply_policies(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    for _name, plugin in PLUGINS:
        plugin(snapshot, proxy, resources)


__all__ = ["PLUGINS", "Plugin", "apply_policies"]
