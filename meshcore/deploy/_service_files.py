"""Consul service-definition documents (``/etc/consul.d/*.json``) for a node's mesh services.

Pure. Two inputs give the same shape (Consul's snake_case agent-configuration keys, the form
:func:`meshcore.catalog.parse_definition` reads back):

* a :class:`~meshcore.catalog.ServiceDefinition` from a file catalog: everything the operator
  wrote is kept (checks, ``proxy.config``), with the sidecar port made explicit, so a port Consul
  would have picked from 21000-21255 cannot move when files are added;
* a :class:`~meshcore.catalog.ServiceInstance` from the Consul catalog: what the catalog holds
  (no checks; Consul's catalog API does not return a check's definition with the service).

Addresses equal to the node's own address are left out, as Consul fills them in.
"""

from __future__ import annotations

from typing import Any, Mapping

from meshcore.catalog.definitions import INGRESS_GATEWAY, CheckDefinition, ServiceDefinition
from meshcore.catalog.model import ServiceInstance, Upstream


def _check(check: CheckDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in check.fields:
        if name == "args":
            out[name] = list(value)
        elif name == "header":
            out[name] = {k: list(v) for k, v in value}
        else:
            out[name] = value
    return out


def _upstream(u: Upstream) -> dict[str, Any]:
    item: dict[str, Any] = {
        "destination_name": u.destination_name,
        "local_bind_address": u.local_bind_address,
        "local_bind_port": u.local_bind_port,
    }
    if u.datacenter:
        item["datacenter"] = u.datacenter
    return item


def _plain(value: Any) -> Any:
    """A JSON-ready deep copy of a proxy ``config`` mapping (lists, dicts, scalars)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_definition(svc: ServiceDefinition) -> dict[str, Any]:
    """``{"service": {...}}`` for a service read from definition files (checks and proxy config kept)."""
    s: dict[str, Any] = {"name": svc.name, "id": svc.id}
    if svc.port is not None:
        s["port"] = svc.port
    if svc.address:
        s["address"] = svc.address
    if svc.kind:
        s["kind"] = svc.kind
    if svc.tags:
        s["tags"] = list(svc.tags)
    if svc.meta:
        s["meta"] = dict(svc.meta)
    if svc.checks:
        s["checks"] = [_check(c) for c in svc.checks]
    upstreams = [_upstream(u) for u in svc.upstreams]
    if svc.kind == INGRESS_GATEWAY and (upstreams or svc.proxy_config):
        proxy: dict[str, Any] = {"upstreams": upstreams}
        if svc.proxy_config:
            proxy["config"] = _plain(svc.proxy_config)
        s["proxy"] = proxy
    if svc.sidecar:
        sc_proxy: dict[str, Any] = {
            "local_service_address": svc.local_service_address,
            "local_service_port": svc.local_service_port,
            "upstreams": upstreams,
        }
        if svc.proxy_config:
            sc_proxy["config"] = _plain(svc.proxy_config)
        sidecar: dict[str, Any] = {"port": svc.sidecar_port, "proxy": sc_proxy}
        if svc.sidecar_address:
            sidecar["address"] = svc.sidecar_address
        s["connect"] = {"sidecar_service": sidecar}
    return {"service": s}


def from_instance(inst: ServiceInstance, node_address: str) -> dict[str, Any]:
    """``{"service": {...}}`` for a catalog instance (Consul source: no checks, upstreams sorted)."""
    s: dict[str, Any] = {"name": inst.service, "id": inst.id, "port": inst.port}
    if inst.address and inst.address != node_address:
        s["address"] = inst.address
    if inst.kind:
        s["kind"] = inst.kind
    if inst.tags:
        s["tags"] = list(inst.tags)
    if inst.meta:
        s["meta"] = dict(inst.meta)
    upstreams = [_upstream(u) for u in inst.upstreams]
    if inst.kind == INGRESS_GATEWAY:
        if upstreams:
            s["proxy"] = {"upstreams": upstreams}
        return {"service": s}
    sidecar: dict[str, Any] = {
        "port": inst.mesh_port,
        "proxy": {
            "local_service_address": inst.local_service_address,
            "local_service_port": inst.port,
            "upstreams": upstreams,
        },
    }
    if inst.mesh_address and inst.mesh_address != node_address:
        sidecar["address"] = inst.mesh_address
    s["connect"] = {"sidecar_service": sidecar}
    return {"service": s}
