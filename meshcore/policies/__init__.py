"""Policy plugins: each kind of policy mutates the built resources of one proxy.

They run in this fixed, explicit order after the per-type builders. A plugin is a pure
function ``apply(snapshot, proxy, resources) -> None`` that edits ``resources`` in place.
"""

from __future__ import annotations

from typing import Callable

from ..snapshot import MeshSnapshot, ProxyInfo
from . import authorization_policy, peer_authentication

Plugin = Callable[[MeshSnapshot, ProxyInfo, dict], None]

PLUGINS: tuple[tuple[str, Plugin], ...] = (
    ("PeerAuthentication", peer_authentication.apply),
    ("AuthorizationPolicy", authorization_policy.apply),
)


def apply_policies(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    for _name, plugin in PLUGINS:
        plugin(snapshot, proxy, resources)
