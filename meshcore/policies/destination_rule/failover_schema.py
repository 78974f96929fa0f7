"""DestinationRule ``failover``: where a target's traffic goes when it has no healthy instance (schema).

A meshcore extension (Istio has no subset or service failover; Consul's ``service-resolver`` ``Failover``
compiles to it)::

    spec:
      host: reviews
      subsets: [{name: stable, labels: {track: stable}}, {name: canary, labels: {track: canary}}]
      failover:
      - subset: stable          # omitted: the host itself and every subset without an entry of its own
        targets:                # tried in order
        - subset: canary        # another subset of the host
        - host: reviews-backup  # another service (its subset with ``subset``)
          datacenter: dc2       # only its instances of that datacenter (Consul's Targets[].Datacenter)

Distinct from ``trafficPolicy.loadBalancer.localityLbSetting.failover`` (the same service in other
datacenters; a target with ``datacenter`` keeps only the instances of that datacenter, as a Consul
``Failover`` target naming one). Each target must differ from the entry itself; a subset of the rule's own host must be
defined here (a subset of another host is checked against that host's DestinationRule by
:func:`failover_problems`, across resources).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from meshcore.resources.kinds._fields import DATACENTER, ServiceHost, at_least_one
from meshcore.resources.schema import Context, DNSLabel, ListOf, Obj, Path, Required

FAILOVER_TARGET = Obj({"host": ServiceHost(), "subset": DNSLabel(), "datacenter": DATACENTER},
                      rules=[at_least_one(("host", "subset", "datacenter"), "a failover target")])

FAILOVER_ENTRY = Obj({"subset": DNSLabel(), "targets": Required(ListOf(FAILOVER_TARGET, min_items=1, unique=True))})

FAILOVER = ListOf(FAILOVER_ENTRY)
"""``spec.failover[]``: per subset (or for the host and every other subset), the ordered targets."""


def failover_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    """An Obj rule on the spec: entries name defined subsets once each; targets are not the entry itself and
    name subsets of the own host that exist."""
    host = cleaned.get("host")
    defined = {s.get("name") for s in cleaned.get("subsets") or ()}
    seen: dict[Any, int] = {}
    for i, entry in enumerate(cleaned.get("failover") or ()):
        at = path.field("failover").index(i)
        subset = entry.get("subset")
        if subset in seen:
            what = f"subset {json.dumps(subset)}" if subset is not None else "the entry without subset"
            ctx.add(at.field("subset"), f"{what} already has its failover at failover[{seen[subset]}]; put all its "
                                        "targets in one entry")
        else:
            seen[subset] = i
        if subset is not None and subset not in defined:
            ctx.add(at.field("subset"), f"subset {json.dumps(subset)} is not defined in subsets "
                                        f"({', '.join(sorted(str(n) for n in defined)) or 'none'})")
        for j, target in enumerate(entry.get("targets") or ()):
            t_host = target.get("host") or host
            t_subset = target.get("subset")
            tat = at.field("targets").index(j)
            if t_host == host and t_subset == subset and not target.get("datacenter"):
                ctx.add(tat, "fails over to itself; name another subset, another host or a datacenter")
            elif t_host == host and t_subset is not None and t_subset not in defined:
                ctx.add(tat.field("subset"), f"subset {json.dumps(t_subset)} is not defined in subsets")


def failover_problems(host: str, raw_failover: Iterable[dict], subsets_of: Any) -> list[tuple[str, str]]:
    """``(field path, message)`` for targets naming a subset another host's DestinationRule does not define;
    ``subsets_of(host)`` gives a host's subset names (None: the host has no DestinationRule)."""
    out = []
    for i, entry in enumerate(raw_failover):
        for j, target in enumerate(entry.get("targets") or ()):
            t_host, t_subset = target.get("host") or host, target.get("subset")
            if t_host == host or t_subset is None:
                continue
            names = subsets_of(t_host)
            if names is None or t_subset not in names:
                have = (f"its DestinationRule defines {', '.join(names) or 'no subset'}" if names is not None
                        else "it has no DestinationRule")
                out.append((f"spec.failover[{i}].targets[{j}].subset",
                            f"subset {json.dumps(t_subset)} of {json.dumps(t_host)} is not defined ({have}); "
                            f"define it in {t_host}'s DestinationRule or fail over to the whole service"))
    return out


__all__ = ["FAILOVER", "failover_rule", "failover_problems"]
