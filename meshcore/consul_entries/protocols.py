"""Service protocols from ``service-defaults.Protocol`` and ``proxy-defaults`` ``Config.protocol`` (pure).

meshcore's generation reads a service's protocol from its instances' meta ``protocol`` (default ``http``):
``tcp`` gets tcp_proxy listeners, the others HTTP connection managers, ``http2`` and ``grpc`` an HTTP/2
connection to the local app. The entries' protocol reaches generation through the catalog:
:func:`with_protocols` sets meta ``protocol`` on every instance that does not declare one, so every reader
(listeners, clusters, routes, policies) sees one answer. The order, as documented in ``docs/consul.md``:

1. the instance's own meta ``protocol`` (meshcore's own spelling wins; ``meshctl consul check`` reports it);
2. the service's ``service-defaults`` ``Protocol``;
3. ``proxy-defaults`` ``global`` ``Config.protocol``;
4. meshcore's default, ``http`` (Consul's is ``tcp``: a mesh moved from Consul keeps its protocol only when
   the entries say it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from ..catalog.model import Catalog
from .model import ConfigEntry

PROTOCOLS = ("tcp", "http", "http2", "grpc")
PROTOCOL_META = "protocol"


@dataclass(frozen=True)
class EntryProtocols:
    """The protocols the entries set: per service, and the global default (``""``: none)."""

    services: tuple[tuple[str, str], ...] = ()
    default: str = ""

    def __bool__(self) -> bool:
        return bool(self.services or self.default)

    def of(self, service: str) -> str:
        return dict(self.services).get(service, self.default)


def entry_protocols(entries: Iterable[ConfigEntry]) -> EntryProtocols:
    """What ``service-defaults`` and ``proxy-defaults`` say (values outside :data:`PROTOCOLS` are left out;
    :mod:`.traffic` reports them)."""
    services: dict[str, str] = {}
    default = ""
    for e in entries:
        if e.kind == "service-defaults":
            wanted = str(e.get("Protocol") or "").lower()
            if wanted in PROTOCOLS:
                services[e.name] = wanted
        elif e.kind == "proxy-defaults" and e.name == "global":
            wanted = str((e.get("Config") or {}).get("protocol") or "").lower()
            if wanted in PROTOCOLS:
                default = wanted
    return EntryProtocols(tuple(sorted(services.items())), default)


def with_protocols(catalog: Catalog, protocols: EntryProtocols) -> Catalog:
    """``catalog`` with meta ``protocol`` set from ``protocols`` on each instance that declares none (``catalog``
    itself when nothing changes)."""
    if not protocols:
        return catalog
    changed = False
    out = []
    for inst in catalog.instances:
        meta = dict(inst.meta)
        wanted = protocols.of(inst.service)
        if wanted and PROTOCOL_META not in meta:
            meta[PROTOCOL_META] = wanted
            inst = replace(inst, meta=tuple(sorted(meta.items())))
            changed = True
        out.append(inst)
    return Catalog.of(catalog.nodes, out) if changed else catalog


__all__ = ["PROTOCOLS", "PROTOCOL_META", "EntryProtocols", "entry_protocols", "with_protocols"]
