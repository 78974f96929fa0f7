"""Which Consul datacenters the catalog source reads, and how their catalogs become one (pure but for parsing).

Two ways to reach several datacenters, as Consul offers them:

* **WAN federation** (``dc1,dc2``): one Consul address; each datacenter is read with ``?dc=<name>`` (the
  local Consul server forwards the request to that datacenter's servers);
* **separate clusters** (``dc1=http://10.0.1.5:8500,dc2=https://10.0.2.5:8501``): each datacenter at its own
  Consul address (cluster peering, or Consuls that were never joined); every other setting (token, TLS
  files) is the same for all of them.

A datacenter whose control plane has a trust domain of its own is listed as ``dc2@other.example`` (also with
``=<address>`` after it): its instances carry that trust domain (federate it with ``meshctl trust-bundle
import``), and callers reaching them through mesh gateways check their SPIFFE IDs in it.

The spec comes from ``--catalog consul:<spec>`` on the control plane (see ``docs/multi-dc.md``). Node names
are unique per datacenter only: a node of a later datacenter of the list whose name an earlier one has is read
as ``<name>.<datacenter>`` (list the own datacenter first: its nodes, whose proxies this control plane serves,
keep their names; another datacenter's nodes are only where its instances run). Only when that name is taken
too is the node left out (reported like any other unusable entry, ``dc2/node/<name>``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..ca._spiffeid import check_trust_domain
from ..errors import ConfigError
from ._consul_settings import ConsulSettings, _split_address
from .model import Catalog, Node, ServiceInstance

_DC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class DatacenterTargets:
    """The datacenters to read, in order: ``(name, address or "")`` ("" = the base Consul address, ``?dc=``)."""

    datacenters: tuple[tuple[str, str], ...]
    # ``(name, trust domain)`` of the datacenters whose workloads have SVIDs of another trust domain (``dc2@td``):
    # their instances carry it, so callers check their SPIFFE IDs in it (docs/multi-dc.md, federated domains).
    trust_domains: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> "DatacenterTargets":
        """``dc1,dc2`` or ``dc1=host:port,dc2=https://host:port`` (both forms may mix); ``dc2@other.example``
        (before any ``=``) names the trust domain of that datacenter's workloads."""
        items: list[tuple[str, str]] = []
        domains: list[tuple[str, str]] = []
        for raw in (part.strip() for part in spec.split(",")):
            if not raw:
                continue
            name, _, address = raw.partition("=")
            name, at, trust_domain = name.strip().partition("@")
            if at:
                check_trust_domain(trust_domain.strip(), ConfigError)
                domains.append((name, trust_domain.strip()))
            if not _DC_NAME.match(name):
                raise ConfigError(f"Consul datacenter {name!r} in {spec!r}: a datacenter name is lowercase letters, "
                                  "digits, '-' and '_' (e.g. consul:dc1,dc2 or consul:dc1=10.0.1.5:8500,dc2=...)")
            if any(name == seen for seen, _ in items):
                raise ConfigError(f"Consul datacenter {name!r} listed twice in {spec!r}")
            if address:
                _split_address(address)  # fails early, with the usual message, on a bad address
            items.append((name, address.strip()))
        if not items:
            raise ConfigError(f"no Consul datacenter in {spec!r}: list them, e.g. consul:dc1,dc2")
        return cls(tuple(items), tuple(domains))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.datacenters)

    def targets(self, base: ConsulSettings) -> tuple[tuple[str, ConsulSettings], ...]:
        """``(datacenter, settings reaching it)`` per datacenter: its own address, else the base one with ``?dc=``."""
        out = []
        for name, address in self.datacenters:
            settings = dataclasses.replace(base, datacenter=name)
            if address:
                scheme, host, port = _split_address(address)
                settings = dataclasses.replace(settings, scheme=scheme or base.scheme, host=host, port=port)
            out.append((name, settings))
        return tuple(out)


def watch_key(datacenter: str, endpoint: str) -> str:
    """The key of one watched endpoint of one datacenter (just the endpoint for the single, unnamed one)."""
    return f"{datacenter}/{endpoint}" if datacenter else endpoint


def split_key(key: str) -> tuple[str, str]:
    dc, _, endpoint = key.rpartition("/")
    return dc, endpoint


def merge_datacenters(parts: Iterable[tuple[str, Catalog, tuple[tuple[str, str], ...]]],
                      trust_domains: Mapping[str, str] | None = None) -> tuple[Catalog, tuple[tuple[str, str], ...]]:
    """One catalog of every datacenter's; rejected entries prefixed with their datacenter.

    A node name already seen in an earlier datacenter is read as ``<name>.<dc>`` (its instances with it); when
    that is taken too, the node is left out (with its instances) and reported. The instances of a datacenter in
    ``trust_domains`` carry its trust domain."""
    nodes: list[Node] = []
    instances: list[ServiceInstance] = []
    rejected: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for dc, catalog, dc_rejected in parts:
        rejected.extend((f"{dc}/{where}", why) for where, why in dc_rejected)
        skipped: set[str] = set()
        renamed: dict[str, str] = {}
        own = {n.name for n in catalog.nodes}
        for node in catalog.nodes:
            if node.name in taken:
                alias = f"{node.name}.{dc}"
                if alias in taken or alias in own:
                    skipped.add(node.name)
                    rejected.append((f"{dc}/node/{node.name}", f"node name already used in datacenter "
                                     f"{taken[node.name]}, and {alias!r} is taken too; rename one of the nodes"))
                    continue
                renamed[node.name] = alias
                node = dataclasses.replace(node, name=alias)
            taken[node.name] = dc
            nodes.append(node)
        td = (trust_domains or {}).get(dc, "")
        for i in catalog.instances:
            if i.node in skipped:
                continue
            changes: dict = {"trust_domain": td} if td else {}
            if i.node in renamed:
                changes["node"] = renamed[i.node]
            instances.append(dataclasses.replace(i, **changes) if changes else i)
    return Catalog.of(nodes, instances), tuple(sorted(rejected))


__all__ = ["DatacenterTargets", "merge_datacenters", "split_key", "watch_key"]
