"""The policy plugins, registered explicitly: :data:`PLUGINS` is the one declaration of their order.

The composer (:mod:`meshcore.compose`) runs them after the per-type generators. A plugin is a pure
function ``apply(snapshot, proxy, resources) -> None`` that edits ``resources`` in place.
"""

from __future__ import annotations

from typing import Callable

from ..snapshot import MeshSnapshot, ProxyInfo
from . import telemetry
from .authorization_policy import plugin as authorization_policy
from .destination_rule import plugin as destination_rule
from .peer_authentication import plugin as peer_authentication
from .rate_limit import plugin as rate_limit
from .virtual_service import plugin as virtual_service

Plugin = Callable[[MeshSnapshot, ProxyInfo, dict], None]

PLUGINS: tuple[tuple[str, Plugin], ...] = (
    # First: the plaintext chains it adds carry the same filters, so the inbound plugins below see them too.
    ("PeerAuthentication", peer_authentication.apply),
    ("AuthorizationPolicy", authorization_policy.apply),
    # Before VirtualService, which replaces the routes DestinationRule gave the host's default hash policy
    # with its own rules (each with its destination's hash policy).
    ("DestinationRule", destination_rule.apply),
    ("VirtualService", virtual_service.apply),
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
