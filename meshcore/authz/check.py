"""``meshctl authz check``: decide a request between two services of a mesh snapshot (pure).

The caller is named by its service (its SPIFFE identity comes from its catalog instances, the
same identity its Envoy presents), by a principal (anything with a ``/``, e.g. a node identity
``cluster.local/meshcore/node/vm9``), or not at all (a plaintext caller). The destination's
labels, namespace, port and protocol come from its instances; instances that would be decided
differently (``reviews`` v1/v2/v3 under a ``version`` selector) are reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError
from ..naming import principal_of
from ..snapshot import MeshSnapshot
from .evaluate import MeshContext, decide
from .model import Request


@dataclass(frozen=True)
class CheckQuery:
    """What ``meshctl authz check`` asks. ``source`` None: a plaintext caller."""

    destination: str
    source: str | None = None
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    headers: Mapping[str, str] | None = None
    source_ip: str | None = None


def _source(snapshot: MeshSnapshot, source: str | None) -> dict:
    if not source:
        return {"service": None, "principal": None, "ip": None}
    if "/" in source:
        return {"service": None, "principal": principal_of(source), "ip": None}
    instances = snapshot.catalog.instances_of(source)
    if not instances:
        raise ConfigError(f"no service {source!r} in the catalog (known: {', '.join(snapshot.catalog.service_names())}); "
                          "name a service, or pass a principal such as cluster.local/ns/default/sa/NAME")
    principals = sorted({principal_of(snapshot.spiffe_id(i)) for i in instances})
    if len(principals) > 1:
        raise ConfigError(f"instances of {source!r} have different identities ({', '.join(principals)}); "
                          "pass one of them as --from")
    return {"service": source, "principal": principals[0], "ip": instances[0].mesh_address or None}


def check(snapshot: MeshSnapshot, query: CheckQuery) -> dict:
    """The decision for ``query`` on every distinct instance group of the destination, as JSON data."""
    src = _source(snapshot, query.source)
    instances = [i for i in snapshot.catalog.instances_of(query.destination) if i.kind == ""]
    if not instances:
        raise ConfigError(f"no mesh service {query.destination!r} in the catalog "
                          f"(known: {', '.join(snapshot.catalog.service_names())})")
    groups: dict[tuple, list] = {}
    for inst in instances:
        key = (tuple(sorted(inst.labels.items())), inst.namespace, inst.port, inst.protocol)
        groups.setdefault(key, []).append(inst)
    ip = query.source_ip or src["ip"]
    results = []
    for (labels, namespace, port, protocol), members in groups.items():
        request = Request(
            principal=src["principal"], source_ip=ip, method=query.method, path=query.path,
            host=query.host if query.host is not None else query.destination, port=port,
            headers=dict(query.headers or {}), protocol=protocol,
        )
        decision = decide(snapshot.resources, dict(labels), namespace, request, workload=query.destination,
                          context=MeshContext.of(snapshot))
        results.append({"instances": sorted(i.id for i in members), "namespace": namespace, "port": port,
                        "protocol": protocol, **decision.to_dict()})
    results.sort(key=lambda r: r["instances"])
    verdicts = {r["allowed"] for r in results}
    return {
        "from": {**src, "ip": ip, "namespace": Request(principal=src["principal"]).source_namespace},
        "to": {"service": query.destination},
        "request": {"method": query.method, "path": query.path,
                    "host": query.host if query.host is not None else query.destination,
                    "headers": dict(query.headers or {})},
        "allowed": verdicts == {True},
        "results": results,
    }


__all__ = ["CheckQuery", "check"]
