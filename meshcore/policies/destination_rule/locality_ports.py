"""Port-level ``localityLbSetting`` / ``zoneAwareLbSetting``: where a port has clusters and endpoints of its own (pure).

A ``portLevelSettings[]`` entry's locality setting replaces its level's for that port (:meth:`.spec.TrafficPolicy.
at_port`), wherever that port's settings apply:

* a Consul service whose instances all register one port: its clusters and ClusterLoadAssignments (host and
  subsets) are that port's, so they are ranked (or weighted) by the port's setting;
* a ServiceEntry host: each port has its own clusters (the upstream's, a VirtualService ``destination.port``'s, a
  Sidecar egress listener's), each weighted by its port's ``distribute``.

A Consul service whose instances register **different** ports is reached through one cluster and one assignment for
all of them (the caller's upstream does not choose a port), so a port cannot have its own locality policy there:
:func:`port_locality_problems` refuses the caller's config with the field path (it keeps its last good one).
"""

from __future__ import annotations

from typing import Any, Iterator

from ...resources.model import Resource

_LOCALITY_FIELDS = ("localityLbSetting", "zoneAwareLbSetting")


def _port_localities(spec: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(field path, port) of every port-level locality setting of a DestinationRule ``spec``."""
    levels = [("spec.trafficPolicy", spec.get("trafficPolicy") or {})]
    levels += [(f"spec.subsets[{i}].trafficPolicy", s.get("trafficPolicy") or {})
               for i, s in enumerate(spec.get("subsets") or ())]
    for at, policy in levels:
        for j, entry in enumerate(policy.get("portLevelSettings") or ()):
            lb = entry.get("loadBalancer") or {}
            for field in _LOCALITY_FIELDS:
                if field in lb:
                    yield f"{at}.portLevelSettings[{j}].loadBalancer.{field}", entry["port"]["number"]


def port_locality_problems(catalog: Any, rule: Resource, host: str) -> list[str]:
    """Why ``rule``'s port-level locality settings cannot apply to mesh service ``host`` (empty when they can):
    its instances register several ports, and one cluster serves them all."""
    settings = list(_port_localities(rule.spec or {})) if "." not in host else []  # a ServiceEntry's ports: own clusters
    if not settings:
        return []
    ports = sorted({i.port for i in catalog.instances_of(host)})
    if len(ports) < 2:
        return []
    listed = ", ".join(map(str, ports))
    return [f"DestinationRule {rule.namespace}/{rule.name} {path} (port {port}): the instances of {host!r} register "
            f"ports {listed}, and one cluster with one set of endpoints serves all of them (an upstream does not "
            "choose a port), so a port cannot have its own locality policy; set it on the level's loadBalancer "
            "instead, or register every instance of the service on one port"
            for path, port in settings]


__all__ = ["port_locality_problems"]
