"""What ``service-defaults`` / ``proxy-defaults`` set on the catalog itself: protocols and mesh gateway modes (pure).

Both reach generation through the catalog the control plane hands out (the catalog source wrapper in
:mod:`meshcore.resources.consul_entries`), so every reader sees one answer: :mod:`.protocols` sets instances'
meta ``protocol``, :mod:`.gateway_modes` their upstreams' mesh gateway mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..catalog.model import Catalog
from .gateway_modes import EntryGatewayModes, entry_gateway_modes, with_gateway_modes
from .model import ConfigEntry
from .protocols import EntryProtocols, entry_protocols, with_protocols


@dataclass(frozen=True)
class EntryDefaults:
    protocols: EntryProtocols = field(default_factory=EntryProtocols)
    gateways: EntryGatewayModes = field(default_factory=EntryGatewayModes)

    def __bool__(self) -> bool:
        return bool(self.protocols or self.gateways)

    def describe(self) -> str:
        p, g = self.protocols, self.gateways
        return (f"protocols {dict(p.services)} (default {p.default or 'none'}); mesh gateway modes "
                f"{dict(g.services)}, upstream defaults {dict(g.upstream_defaults)}, overrides "
                f"{ {f'{a}->{b}': m for (a, b), m in g.overrides} } (default {g.default or 'none'})")


def entry_defaults(entries: Iterable[ConfigEntry]) -> EntryDefaults:
    entries = list(entries)
    return EntryDefaults(entry_protocols(entries), entry_gateway_modes(entries))


def with_defaults(catalog: Catalog, defaults: EntryDefaults) -> Catalog:
    """``catalog`` with the entries' protocols and gateway modes applied (itself when nothing changes)."""
    return with_gateway_modes(with_protocols(catalog, defaults.protocols), defaults.gateways)


__all__ = ["EntryDefaults", "entry_defaults", "with_defaults"]
