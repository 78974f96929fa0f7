"""Sidecar ``ingress[]`` on the proxies of the instances it selects (pure): the inbound port as Istio describes it.

An entry describes the inbound listener of each selected instance whose service port or sidecar port is its
``port.number`` (:func:`meshcore.xds.generate.sidecar_ingress.ingress_matches`). Its protocol is generation's (the
instance reaches every generator with it as its ``protocol`` meta); this module does the rest, on the proxy's
built resources, after PeerAuthentication has set the port's chains:

* ``defaultEndpoint``: the local app cluster's one endpoint (``local_app:<instance>``): ``127.0.0.1:PORT`` /
  ``[::1]:PORT`` on loopback, ``0.0.0.0:PORT`` / ``[::]:PORT`` on the instance's own address (its service
  address, else its node's), ``unix:///path`` (or ``unix://@name``) a unix socket (an Envoy pipe address);
* ``bind``: the inbound listener's address (the sidecar port stays the registration's). An address of the VM
  only: the instance's or its node's address, loopback, or the wildcard (every address);
* ``connectionPool``: the port's pool, in place of ``inboundConnectionPool`` (:mod:`.inbound_pool`);
* ``tls``: TLS for callers outside the mesh with the given files. Under DISABLE every caller speaks it; under
  PERMISSIVE the mesh's mTLS chain keeps the connections whose SNI is a mesh name (the service, or its name through
  a mesh gateway) and every other TLS connection is terminated with these certificates (plaintext is no longer
  accepted). Refused under STRICT: no caller outside the mesh reaches a STRICT port;
* ``captureMode`` DEFAULT and NONE are what meshcore does (no capture: callers connect to the sidecar port);
* ``port.name`` (Istio's label of the port) and the entry go in the listener's metadata
  (``meshcore.sidecar_ingress``: Sidecar, entry, port, protocol, name), seen in config dumps.

A selected instance that no entry describes (or two do), a ``bind`` that is not the VM's, an endpoint that is the
listener itself, or ``tls`` on a STRICT port refuse this proxy's config (:class:`~meshcore.errors.SnapshotInvalid`,
raised by the plugin with every problem): the proxy keeps its last good config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterator, Sequence

from envoy.config.core.v3 import address_pb2
from google.protobuf import struct_pb2

from ... import naming
from ...analyze._finding import ERROR, Finding
from ...catalog.model import Catalog, ServiceInstance
from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.listeners import MTLS_CHAIN, PLAINTEXT_CHAIN
from ...xds.generate.sidecar_ingress import any_ingress, ingress_matches
from ...xds.generate.sidecar_scope import sidecar_for
from ...xds.generate.vocab import CLUSTER, LISTENER
from ..gateway.servers import downstream_tls
from ..gateway.spec import ServerTls
from ..peer_authentication.schema import KIND_NAME as PEER_AUTHENTICATION
from ..peer_authentication.schema import effective_mtls
from .ingress_schema import Endpoint, IngressListener
from .schema import KIND_NAME
from .spec import spec_of

INGRESS_TLS_CHAIN = "ingress-tls"
METADATA_KEY = "meshcore.sidecar_ingress"


def entry_for(sidecars: tuple[Resource, ...], inst: ServiceInstance) -> tuple[Resource, int, IngressListener] | None:
    """``(Sidecar, index, entry)`` of the ``ingress[]`` entry describing ``inst``'s inbound port, if one does."""
    if not any_ingress(sidecars):
        return None
    sidecar = sidecar_for(sidecars, inst)
    matches = ingress_matches(sidecar, inst)
    if sidecar is None or not matches:
        return None
    return sidecar, matches[0][0], spec_of(sidecar).ingress[matches[0][0]]


def _bind_ok(bind: str, allowed: list[str]) -> bool:
    ip = ipaddress.ip_address(bind)
    return ip.is_loopback or ip.is_unspecified or any(_same(bind, a) for a in allowed)


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b  # a node registered by name


def app_address(endpoint: Endpoint, snapshot: MeshSnapshot, proxy: ProxyInfo,
                inst: ServiceInstance) -> address_pb2.Address:
    """Where the sidecar forwards to the app for ``endpoint``."""
    if endpoint.pipe:
        return address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint.pipe))
    node = snapshot.catalog.node(proxy.node)
    host = _instance_host(inst, node.address if node else "") if endpoint.instance else endpoint.host
    return c.socket_address(host, endpoint.port)


def _instance_host(inst: ServiceInstance, node_address: str) -> str:
    """The instance's own address (``0.0.0.0:PORT`` in a defaultEndpoint): its service address, else its node's."""
    return inst.address or node_address or inst.mesh_address


def mesh_server_names(inst: ServiceInstance) -> list[str]:
    """The SNI mesh callers send to ``inst``: its service name, through a mesh gateway its datacenter's name and
    a subset's (``<subset>.<name>``)."""
    through_gateway = naming.mesh_gateway_sni(inst.service, inst.datacenter)
    return [inst.service, through_gateway, f"*.{through_gateway}"]


def _terminate_tls(listener: c.ListenerDraft, tls: ServerTls, snapshot: MeshSnapshot, proxy: ProxyInfo,
                   inst: ServiceInstance) -> None:
    """The port's plaintext chain (PeerAuthentication's, PERMISSIVE or DISABLE) terminates TLS instead; under
    PERMISSIVE the mTLS chain keeps the mesh's server names."""
    context = downstream_tls(tls, snapshot, proxy, inst)
    if inst.protocol == "tcp":
        del context.common_tls_context.alpn_protocols[:]  # bytes for the app: no HTTP to negotiate
    for chain in listener.filter_chains:
        if chain.name == MTLS_CHAIN:
            chain.message.filter_chain_match.server_names.extend(mesh_server_names(inst))
        elif chain.name == PLAINTEXT_CHAIN:
            chain.message.name = INGRESS_TLS_CHAIN
            chain.message.filter_chain_match.transport_protocol = "tls"
            chain.message.transport_socket.CopyFrom(c.transport_socket("envoy.transport_sockets.tls", context))


@dataclass(frozen=True)
class IngressProblem:
    """Why an ``ingress[]`` entry does not fit an instance: ``path`` in the Sidecar, and what to do."""

    path: str
    message: str


def _own_address(entry: IngressListener, inst: ServiceInstance) -> tuple[str, int]:
    return (entry.bind or inst.mesh_address, inst.mesh_port)


def check_instance(sidecar: Resource, inst: ServiceInstance, node_address: str,
                   peer_authentications: Sequence[Resource]) -> tuple[int | None, list[IngressProblem]]:
    """The index of the ``ingress[]`` entry of ``sidecar`` (which applies to ``inst``) describing ``inst``'s port,
    and what does not fit: pure, so the plugin and ``meshctl analyze`` (MC0108) say the same."""
    entries = spec_of(sidecar).ingress
    matches = ingress_matches(sidecar, inst)
    named = f"instance {inst.id} (service port {inst.port}, sidecar port {inst.mesh_port})"
    if not matches:
        ports = ", ".join(str(e.number) for e in entries)
        return None, [IngressProblem("spec.ingress", f"{named} matches none of the ingress ports ({ports}): add an "
                                                     f"entry with port.number {inst.port}, or give this workload a "
                                                     "Sidecar of its own")]
    if len(matches) > 1:
        return None, [IngressProblem(f"spec.ingress[{matches[1][0]}].port.number",
                                     f"{named} is described by both ingress[{matches[0][0]}] and "
                                     f"ingress[{matches[1][0]}]: keep one")]
    index = matches[0][0]
    entry, at = entries[index], f"spec.ingress[{index}]"
    problems = []
    allowed = sorted({a for a in (inst.mesh_address, inst.address, node_address) if a})
    if entry.bind is not None and not _bind_ok(entry.bind, allowed):
        problems.append(IngressProblem(f"{at}.bind", f"{entry.bind} is not an address of node {inst.node} ({named}); "
                                                     f"use one of {', '.join(allowed)}, a loopback address or 0.0.0.0"))
    endpoint = entry.endpoint
    host, port = _own_address(entry, inst)
    target = (_instance_host(inst, node_address) if endpoint.instance else endpoint.host) if endpoint else ""
    if (endpoint is not None and not endpoint.pipe and endpoint.port == port
            and (_same(target, host) or ipaddress.ip_address(host).is_unspecified)):
        problems.append(IngressProblem(f"{at}.defaultEndpoint", f"is the sidecar's own listener ({host}:{port}) for "
                                                                f"{named}; give the address the app listens on"))
    if entry.tls is not None:
        mode = effective_mtls(peer_authentications, inst.labels, inst.namespace, inst.port)
        if mode == "STRICT":
            problems.append(IngressProblem(f"{at}.tls", f"tls serves callers outside the mesh, but PeerAuthentication "
                                                        f"makes port {inst.port} of {inst.id} STRICT (mesh mTLS only); "
                                                        f"set its portLevelMtls {inst.port} to PERMISSIVE or DISABLE, "
                                                        "or leave tls out"))
    return index, problems


def _label(listener: c.ListenerDraft, sidecar: Resource, index: int, entry: IngressListener) -> None:
    """Which entry shaped the listener, in its metadata (``port.name`` is Istio's label of the port): what a config
    dump or ``meshctl get proxy`` shows beside the listener."""
    label = struct_pb2.Struct()
    label.update({"sidecar": f"{sidecar.namespace}/{sidecar.name}", "entry": f"ingress[{index}]",
                  "port": entry.number, "protocol": entry.protocol, "name": entry.name})
    listener.message.metadata.filter_metadata[METADATA_KEY].CopyFrom(label)


def ingress_findings(resources: Sequence[Resource], catalog: Catalog) -> Iterator[Finding]:
    """``meshctl analyze`` MC0108: each instance whose Sidecar's ``ingress[]`` does not fit it (its proxy's config
    would be refused), from the same :func:`check_instance` the plugin runs."""
    sidecars = tuple(r for r in resources if r.kind == KIND_NAME)
    if not any_ingress(sidecars):
        return
    policies = [r for r in resources if r.kind == PEER_AUTHENTICATION]
    for inst in sorted((i for i in catalog.instances if i.kind == ""), key=lambda i: i.id):
        sidecar = sidecar_for(sidecars, inst)
        if sidecar is None or not spec_of(sidecar).ingress:
            continue
        node = catalog.node(inst.node)
        for problem in check_instance(sidecar, inst, node.address if node else "", policies)[1]:
            yield Finding("MC0108", ERROR, str(sidecar.key), problem.path, problem.message,
                          f"node {inst.node}'s proxy keeps its last good config until this is fixed")


def apply_ingress(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict,
                  sidecars: tuple[Resource, ...]) -> list[str]:
    """Each local instance's ``ingress[]`` entry on its inbound listener and app cluster; the problems found."""
    if not any_ingress(sidecars):
        return []
    listeners = {l.name: l for l in resources[LISTENER]}
    clusters = {cl.name: cl for cl in resources[CLUSTER]}
    problems: list[str] = []
    for inst in c.sidecar_instances(snapshot, proxy):
        sidecar = sidecar_for(sidecars, inst)
        if sidecar is None or not spec_of(sidecar).ingress:
            continue
        node = snapshot.catalog.node(proxy.node)
        index, found = check_instance(sidecar, inst, node.address if node else "",
                                      snapshot.resources_of(PEER_AUTHENTICATION))
        problems += [f"Sidecar {sidecar.namespace}/{sidecar.name} {p.path}: {p.message}" for p in found]
        listener = listeners.get(naming.inbound_listener(inst.id))
        cluster = clusters.get(naming.local_app_cluster(inst.id))
        if found or index is None or listener is None or cluster is None:
            continue
        entry = spec_of(sidecar).ingress[index]
        _label(listener, sidecar, index, entry)
        if entry.bind is not None:
            listener.message.address.CopyFrom(c.socket_address(entry.bind, inst.mesh_port))
        if entry.endpoint is not None:
            endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
            endpoint.address.CopyFrom(app_address(entry.endpoint, snapshot, proxy, inst))
        if entry.tls is not None:
            _terminate_tls(listener, entry.tls, snapshot, proxy, inst)
    return problems


__all__ = ["INGRESS_TLS_CHAIN", "METADATA_KEY", "IngressProblem", "apply_ingress", "app_address", "check_instance", "entry_for",
           "ingress_findings", "mesh_server_names"]
