"""Policy plugins: each kind of policy mutates the built resources of one proxy.

They run in this fixed, explicit order after the per-type builders. A plugin is a pure
function ``apply(snapshot, proxy, resources) -> None`` that edits ``resources`` in place.
"""

from __future__ import annotations

from typing import Callable

from ..observe.telemetry import apply as _telemetry_apply
from ..snapshot import MeshSnapshot, ProxyInfo
from . import authorization_policy, destination_rule, peer_authentication, rate_limit, virtual_service

Plugin = Callable[[MeshSnapshot, ProxyInfo, dict], None]

PLUGINS: tuple[tuple[str, Plugin], ...] = (
    ("PeerAuthentication", peer_authentication.apply),
    ("AuthorizationPolicy", authorization_policy.apply),
    ("DestinationRule", destination_rule.apply),
    ("VirtualService", virtual_service.apply),
    ("RateLimit", rate_limit.apply),
    # Last: access logs and tracing see every chain and RBAC filter the plugins above put in.
    ("Telemetry", _telemetry_apply),
)


def apply_policies(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    for _name, plugin in PLUGINS:
        plugin(snapshot, proxy, resources)
