"""``meshctl authz dry-run``: which observed calls would new policies deny (or allow)? Pure functions.

Observed calls come from Envoy's JSON access logs (one object per line; the keys are meshcore's
access-log contract: ``direction``, ``node``, ``service``, ``method``, ``path``, ``authority``,
``source_spiffe_id``, ``source_address``, ``response_code``, ``rbac_result``, ...). Only
``inbound`` entries count: they are what the destination's Envoy decided, with the caller's
verified identity. Identical calls are counted once with a count.

Each distinct call is decided twice by the same evaluator as ``meshctl authz check``
(:func:`meshcore.authz.decide`): with the mesh's current resources, and with the new ones applied
over them (same kind/namespace/name replaces). Calls whose verdict flips are reported, grouped by
source, destination, method and path.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ..naming import principal_of
from ..policies.authorization_policy.schema import KIND_NAME as AUTHZ_KIND
from ..resources.model import Resource
from ..snapshot import MeshSnapshot
from .evaluate import MeshContext, decide
from .model import Request
from ..xds.generate.sidecar_ingress import declared_instances

HEADER_CAVEAT = ("request headers are not in the access log: `when` conditions on request.headers were "
                 "evaluated as if the header were absent")


@dataclass(frozen=True)
class ObservedCall:
    """One inbound call as the destination's Envoy logged it (only what decides authorization)."""

    service: str
    node: str | None = None
    source_principal: str | None = None  # without spiffe://; None: plaintext caller
    source_ip: str | None = None
    method: str | None = None  # None: a TCP connection
    path: str | None = None  # without the query string
    host: str | None = None
    destination_ip: str | None = None  # the address it connected to (destination.ip)
    sni: str | None = None  # the TLS server name it asked for (connection.sni)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ObservedCall":
        def opt(name: str) -> str | None:
            value = data.get(name)
            return str(value) if value not in (None, "") else None

        service = opt("service")
        if not service:
            raise ValueError("an observed call needs its destination 'service'")
        return cls(service=service, node=opt("node"), source_principal=opt("source_principal"),
                   source_ip=opt("source_ip"), method=opt("method"), path=opt("path"), host=opt("host"),
                   destination_ip=opt("destination_ip"), sni=opt("sni"))


def _ip_of(address: Any) -> str | None:
    """``10.0.0.1:5555`` / ``[::1]:5555`` / ``10.0.0.1`` -> the IP; None when absent."""
    if not address or not isinstance(address, str):
        return None
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else address


def call_of_entry(entry: Mapping[str, Any]) -> ObservedCall | None:
    """The call an access-log entry records, or None when it is not an inbound call to a service."""
    if entry.get("direction") != "inbound" or not entry.get("service"):
        return None
    principal = entry.get("source_spiffe_id")
    path = entry.get("path")
    if isinstance(path, str):
        path = path.split("?", 1)[0] or "/"
    method = entry.get("method")
    return ObservedCall(
        service=str(entry["service"]), node=str(entry["node"]) if entry.get("node") else None,
        source_principal=principal_of(principal) if isinstance(principal, str) and principal else None,
        source_ip=_ip_of(entry.get("source_address")),
        method=method if isinstance(method, str) and method else None,
        path=path if isinstance(path, str) and method else None,
        host=str(entry["authority"]) if entry.get("authority") else None,
        destination_ip=_ip_of(entry.get("destination_address")),
        sni=str(entry["requested_server_name"]) if entry.get("requested_server_name") else None,
    )


def read_access_log(lines: Iterable[str], counts: Counter | None = None) -> tuple[Counter, int]:
    """Count the inbound calls in ``lines`` (JSON access-log lines) into ``counts``; returns it and the
    number of lines that were not JSON objects (text-format logs, Envoy's own messages)."""
    counts = Counter() if counts is None else counts
    skipped = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(entry, dict):
            skipped += 1
            continue
        call = call_of_entry(entry)
        if call is not None:
            counts[call] += 1
    return counts, skipped


def merge_resources(current: Iterable[Resource], new: Iterable[Resource]) -> list[Resource]:
    """The resources after applying ``new`` over ``current`` (a resource with the same key replaces)."""
    merged = {r.key: r for r in current}
    merged.update({r.key: r for r in new})
    return list(merged.values())


def _verdict(decision) -> dict[str, Any]:
    return {"allowed": decision.allowed, "action": decision.action, "policy": decision.policy,
            "rule_index": decision.rule_index, "reason": decision.reason}


def _sources_by_principal(snapshot: MeshSnapshot) -> dict[str, str]:
    out: dict[str, str] = {}
    for inst in snapshot.catalog.instances:
        out.setdefault(principal_of(snapshot.spiffe_id(inst)), inst.service)
    return out


def dry_run(snapshot: MeshSnapshot, new_resources: Iterable[Resource], calls: Mapping[ObservedCall, int]) -> dict:
    """Decide every observed call with the current and with the proposed resources; report the flips.

    Answer: ``would_deny`` (allowed now, denied after), ``would_allow`` (the reverse): lists of groups
    ``{source, source_service, destination, method, path, count, before, after}``; ``unchanged``
    (calls), ``unknown_destinations`` (services not in the catalog), ``observed``/``distinct`` totals.
    """
    new_resources = list(new_resources)
    proposed = merge_resources(snapshot.resources, new_resources)
    context = MeshContext.of(snapshot)
    services = _sources_by_principal(snapshot)
    groups: dict[tuple, dict[str, Any]] = {}
    unchanged = 0
    unknown: Counter = Counter()
    for call, count in sorted(calls.items(), key=lambda kv: repr(kv[0])):
        instances = declared_instances(snapshot, tuple(i for i in snapshot.catalog.instances_of(call.service)
                                                       if i.kind == ""))  # inbound protocol of Sidecar ingress[]
        local = [i for i in instances if call.node and i.node == call.node]
        pool = local or instances
        inst = pool[0] if pool else None
        if inst is None:
            unknown[call.service] += count
            continue
        request = Request(principal=call.source_principal, source_ip=call.source_ip, method=call.method or "GET",
                          path=call.path or "/", host=call.host or call.service, port=inst.port,
                          protocol=inst.protocol, destination_ip=call.destination_ip, sni=call.sni)
        labels, ns = dict(inst.labels), inst.namespace
        before = decide(snapshot.resources, labels, ns, request, workload=call.service, context=context)
        after = decide(proposed, labels, ns, request, workload=call.service, context=context)
        if before.allowed == after.allowed:
            unchanged += count
            continue
        change = "would_deny" if before.allowed else "would_allow"
        source = call.source_principal or "(plaintext)"
        key = (change, source, call.service, call.method or "", call.path or "", after.policy, before.policy)
        group = groups.setdefault(key, {
            "source": source, "source_service": services.get(call.source_principal or ""),
            "destination": call.service, "method": call.method, "path": call.path, "count": 0,
            "before": _verdict(before), "after": _verdict(after)})
        group["count"] += count
    out: dict[str, Any] = {"would_deny": [], "would_allow": []}
    for key in sorted(groups, key=lambda k: (k[0], -groups[k]["count"], k[1:5])):
        out[key[0]].append(groups[key])
    caveats = []
    if any(r.kind == AUTHZ_KIND and "request.headers" in r.canonical_json() for r in proposed):
        caveats.append(HEADER_CAVEAT)
    out.update(
        resources=sorted(str(r.key) for r in new_resources),
        observed=sum(calls.values()), distinct=len(calls), unchanged=unchanged,
        unknown_destinations=dict(sorted(unknown.items())), caveats=caveats,
    )
    return out


__all__ = ["HEADER_CAVEAT", "ObservedCall", "call_of_entry", "dry_run", "merge_resources", "read_access_log"]
