"""Policy plugins: each kind of policy edits the generated resources of one proxy.

:data:`~meshcore.policies.registry.PLUGINS` is the one declaration of their order; the composer
(:mod:`meshcore.compose`) runs them after the per-type generators. Each policy kind is one folder
(``peer_authentication/``, ``authorization_policy/``, ``destination_rule/``, ``virtual_service/``,
``rate_limit/``) with its schema, typed spec, plugin, Envoy helpers and golden data (``testdata/``).
:mod:`.telemetry` is a plugin without a resource kind: it reads the mesh settings.

The names below load lazily: the resource registry imports a kind's schema from its folder, and that
must not import every plugin (and the generators behind them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .registry import PLUGINS, Plugin, apply_policies

__getattr__ = lazy_exports(__name__, {"PLUGINS": ".registry", "Plugin": ".registry", "apply_policies": ".registry"})

__all__ = ["PLUGINS", "Plugin", "apply_policies"]
