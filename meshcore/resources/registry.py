"""The explicit, ordered registry of resource kinds.

Adding a kind is one module that defines a ``KIND: KindSpec`` (a policy kind's ``schema.py`` in its folder
``meshcore/policies/<kind>/``; a kind generation never reads, such as AlertRule, under
:mod:`meshcore.resources.kinds`), plus one line in ``_ORDER`` below. This order is the one operators see (listings,
validation reports); the order in which policy plugins edit Envoy config is declared separately, once,
in :data:`meshcore.policies.PLUGINS`.
"""

from __future__ import annotations

from meshcore.errors import ConfigError

from ._kindspec import KindSpec, Validator
from ..policies.destination_rule import schema as destination_rule
from ..policies.peer_authentication import schema as peer_authentication
from ..policies.authorization_policy import schema as authorization_policy
from ..policies.rate_limit import schema as rate_limit
from ..policies.request_authentication import schema as request_authentication
from ..policies.gateway import schema as gateway
from ..policies.virtual_service import schema as virtual_service
from ..policies.service_entry import schema as service_entry
from ..policies.sidecar import schema as sidecar
from .kinds import alert_rule

_ORDER: tuple[KindSpec, ...] = (
    peer_authentication.KIND,
    authorization_policy.KIND,
    destination_rule.KIND,
    virtual_service.KIND,
    service_entry.KIND,
    sidecar.KIND,
    rate_limit.KIND,
    request_authentication.KIND,
    gateway.KIND,
    alert_rule.KIND,
)

KINDS: dict[str, KindSpec] = {k.kind: k for k in _ORDER}
"""Every known kind by name, in registration order."""


def get_kind(kind: str) -> KindSpec:
    """The :class:`KindSpec` for ``kind``; :class:`ConfigError` listing the known kinds otherwise."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


__all__ = ["KindSpec", "Validator", "KINDS", "get_kind"]
