"""``meshctl authz check``: decide a request between two services of a mesh snapshot (pure).

The caller is named by its service (its SPIFFE identity comes from its catalog instances, the
same identity its Envoy presents), by a principal (anything with a ``/``, e.g. a node identity
``cluster.local/meshcore/node/vm9``), or not at all (a plaintext caller). The destination's
labels, namespace, port and protocol come from its instances; instances that would be decided
differently (``reviews`` v1/v2/v3 under a ``version`` selector) are reported separately. An ingress gateway as the
destination is decided on each of its listeners (AuthorizationPolicy at the gateway: ``ports`` name the listener's
port; ``remote_ip`` the client X-Forwarded-For names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError
from ..naming import principal_of
from ..snapshot import MeshSnapshot
from ..policies.request_authentication.payload import normalized_payload, split_claims_for
from ..policies.request_authentication.schema import authentications_for
from .token import check_token
from ..catalog.definitions import INGRESS_GATEWAY
from .evaluate import MeshContext, decide
from .model import Request
from ..xds.generate.sidecar_ingress import declared_instances


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
    jwt: Mapping[str, object] | None = None  # the verified token's payload (RequestAuthentication); None: no token
    token: str | None = None  # a JWT as sent (Authorization: Bearer), checked as the proxy would (.token)
    jwks: str | None = None  # a key set to check its signature with where the rule's keys are remote
    now: float | None = None  # the time the token is checked at (None: the clock's)
    remote_ip: str | None = None  # the client as X-Forwarded-For names it (an ingress gateway's remoteIpBlocks)
    sni: str | None = None  # the server name the caller asks for (connection.sni); None: the destination's name


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


def _names_destination_ip(resources) -> bool:
    """Whether some AuthorizationPolicy has a ``destination.ip`` condition."""
    for r in resources:
        if r.kind != "AuthorizationPolicy":
            continue
        for rule in (r.spec or {}).get("rules") or ():
            if any(isinstance(w, dict) and w.get("key") == "destination.ip" for w in rule.get("when") or ()):
                return True
    return False


def check(snapshot: MeshSnapshot, query: CheckQuery) -> dict:
    """The decision for ``query`` on every distinct instance group of the destination, as JSON data."""
    src = _source(snapshot, query.source)
    instances = list(declared_instances(snapshot, tuple(i for i in snapshot.catalog.instances_of(query.destination)
                                                        if i.kind == "")))  # inbound protocol of Sidecar ingress[]
    gateways = [i for i in snapshot.catalog.instances_of(query.destination) if i.kind == INGRESS_GATEWAY]
    if not instances and not gateways:
        raise ConfigError(f"no mesh service {query.destination!r} in the catalog "
                          f"(known: {', '.join(snapshot.catalog.service_names())})")
    # destination.ip is each instance's own listener address: instances are told apart by it only when a policy
    # asks for it (else one answer per group of alike instances)
    by_address = _names_destination_ip(snapshot.resources)
    groups: dict[tuple, list] = {}
    for inst in instances:
        key = (tuple(sorted(inst.labels.items())), inst.namespace, inst.port, inst.protocol,
               inst.mesh_address if by_address else None)
        groups.setdefault(key, []).append(inst)
    if gateways:
        from ..policies.authorization_policy.gateway import listener_ports  # generation: loaded when asked for
    for inst in gateways:  # an ingress gateway: decided on each of its listeners (ports name the listener's port)
        for port in listener_ports(snapshot.resources, inst):
            key = (tuple(sorted(inst.labels.items())), inst.namespace, port, "http",
                   inst.mesh_address if by_address else None)
            groups.setdefault(key, []).append(inst)
    ip = query.source_ip or src["ip"]
    results = []
    now = time.time() if query.now is None else query.now
    sni = query.sni if query.sni is not None else query.destination  # what a mesh caller's cluster sends
    for (labels, namespace, port, protocol, _), members in groups.items():
        payload: Mapping[str, object] | None = None
        if query.jwt is not None:  # as the destination's jwt_authn puts it into metadata (space-delimited claims split)
            payload = normalized_payload(query.jwt, split_claims_for(snapshot.resources, dict(labels), namespace,
                                                                     query.jwt.get("iss")))
        token = None
        if query.token is not None:  # TCP workloads carry no requests: RequestAuthentication does not apply there
            selected = [] if protocol == "tcp" else authentications_for(snapshot.resources, dict(labels), namespace)
            token = check_token(query.token, selected, now, query.jwks, snapshot.settings.jwks)
            if token.status:  # refused by jwt_authn, before any AuthorizationPolicy
                results.append({"instances": sorted(i.id for i in members), "namespace": namespace, "port": port,
                                "protocol": protocol, "allowed": False, "action": "RequestAuthentication",
                                "policy": None, "rule_index": None, "reason": token.reason, "audit": [],
                                "dry_run": None, "token": token.to_dict()})
                continue
            payload = token.payload
        request = Request(
            principal=src["principal"], source_ip=ip, method=query.method, path=query.path,
            host=query.host if query.host is not None else query.destination, port=port,
            headers=dict(query.headers or {}), protocol=protocol, jwt=payload, remote_ip=query.remote_ip,
            destination_ip=members[0].mesh_address or None, sni=sni or None,
        )
        decision = decide(snapshot.resources, dict(labels), namespace, request, workload=query.destination,
                          context=MeshContext.of(snapshot))
        results.append({"instances": sorted(i.id for i in members), "namespace": namespace, "port": port,
                        "protocol": protocol, **decision.to_dict(),
                        **({"token": token.to_dict()} if token is not None else {})})
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
