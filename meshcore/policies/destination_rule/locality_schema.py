"""``localityLbSetting.distribute`` and ``failoverPriority`` (and the same under ``zoneAwareLbSetting``): schema.

A meshcore locality is ``<datacenter>[/<zone>]`` (Envoy ``region`` / ``zone``; the zone is the node meta ``zone``).
Istio writes ``region/zone/subzone``: meshcore has no subzone, so a third segment may only be ``*``. ``*`` stands
for any datacenter or zone and may only be the last segment (as Istio's)::

    localityLbSetting:
      distribute:                       # from a caller in dc1: 80% to dc1, 20% to dc2 (via its mesh gateways)
      - from: dc1/*
        to: {"dc1/*": 80, "dc2/*": 20}
    localityLbSetting:
      failoverPriority: [topology.kubernetes.io/zone, version]   # same zone first, then same version, then the rest

Istio's rules: ``distribute`` and ``failover`` exclude each other, so do ``distribute`` and ``failoverPriority``;
the weights of one ``from`` are each 1-100 and sum to 100; a ``from`` appears once. ``failoverPriority`` may
be combined with ``failover`` only without the topology labels (the datacenter order is then ``failover``'s).
"""

from __future__ import annotations

import json
from typing import Any

from meshcore.resources.schema import Context, Int, ListOf, MapOf, Obj, Path, Required, Str, StrKey

LOCALITY_PATTERN = r"\*|[a-z0-9_-]+(/(\*|[A-Za-z0-9._-]+(/\*)?))?"
_LOCALITY_HINT = ("must be a locality <datacenter>[/<zone>] where '*' (any) may end it, e.g. dc1, dc1/*, dc1/zone-a "
                  "(meshcore has no subzone: a third segment may only be '*')")

LOCALITY = Str(min_len=1, pattern=LOCALITY_PATTERN, pattern_hint=_LOCALITY_HINT)

REGION_LABELS = ("topology.kubernetes.io/region", "topology.istio.io/network")
"""Istio's labels that stand for meshcore's datacenter (each Consul datacenter is its own network, joined by mesh
gateways)."""
ZONE_LABELS = ("topology.kubernetes.io/zone",)
"""Istio's labels that stand for meshcore's zone (the node meta ``zone``)."""
SUBZONE_LABEL = "topology.istio.io/subzone"
TOPOLOGY_LABELS = REGION_LABELS + ZONE_LABELS

class _PriorityLabel(Str):
    """A ``failoverPriority`` entry: a label key, or ``key=value``; Istio's subzone label is refused."""

    def __init__(self) -> None:
        super().__init__(1, 317, r"[^\s\"',{}=]+(=[^\s\"',{}]*)?",
                         "must be a label key, or key=value (no whitespace, quotes, ',' or braces)")

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        out = super().check(value, path, ctx)
        if isinstance(out, str) and out.split("=", 1)[0] == SUBZONE_LABEL:
            ctx.add(path, f"{SUBZONE_LABEL}: meshcore localities have no subzone (a locality is a datacenter and a "
                          f"zone); use {ZONE_LABELS[0]} or an instance label")
        return out


def _distribute_entry(cleaned: dict, path: Path, ctx: Context) -> None:
    weights = cleaned.get("to") or {}
    total = sum(weights.values())
    if weights and total != 100:
        ctx.add(path.field("to"), f"the weights of one 'from' must sum to 100 (got {total}: "
                                  f"{', '.join(f'{k}={v}' for k, v in weights.items())})")


DISTRIBUTE = ListOf(Obj(
    {"from": Required(LOCALITY),
     "to": Required(MapOf(Int(1, 100, message="must be a weight 1-100 (percent of the caller's traffic)"),
                          key=StrKey(LOCALITY), min_items=1))},
    rules=[_distribute_entry]), min_items=1)
"""``distribute[]``: for callers in ``from``, the share of traffic (percent) of each ``to`` locality."""

FAILOVER_PRIORITY = ListOf(_PriorityLabel(), min_items=1, unique=True)
"""``failoverPriority``: labels, most important first; endpoints matching the caller on more leading ones first."""


def locality_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    """An Obj rule on ``localityLbSetting``: Istio's exclusions between distribute, failover and failoverPriority,
    and one entry per ``from``."""
    if "distribute" in cleaned and "failover" in cleaned:
        ctx.add(path.field("distribute"), "distribute and failover cannot both be set (as in Istio): weight the "
                                          "datacenters with distribute, or order them with failover")
    if "distribute" in cleaned and "failoverPriority" in cleaned:
        ctx.add(path.field("failoverPriority"), "distribute and failoverPriority cannot both be set (as in Istio)")
    seen: dict[str, int] = {}
    for i, entry in enumerate(cleaned.get("distribute") or ()):
        src = entry.get("from")
        if src in seen:
            ctx.add(path.field("distribute").index(i).field("from"),
                    f"{json.dumps(src)} already has its weights at distribute[{seen[src]}]; one entry per 'from'")
        seen.setdefault(src, i)
    if "failover" in cleaned:
        for i, label in enumerate(cleaned.get("failoverPriority") or ()):
            if label.split("=", 1)[0] in TOPOLOGY_LABELS:
                ctx.add(path.field("failoverPriority").index(i),
                        f"{label} cannot be combined with failover (as in Istio for the topology labels): failover "
                        "already orders the datacenters; drop one of them")


__all__ = ["DISTRIBUTE", "FAILOVER_PRIORITY", "LOCALITY", "REGION_LABELS", "ZONE_LABELS", "SUBZONE_LABEL",
           "TOPOLOGY_LABELS", "locality_rule"]
