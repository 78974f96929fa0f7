"""Pure: turn Consul's catalog and health responses into a meshcore :class:`Catalog`.

Input is exactly what Consul's HTTP API returns: ``/v1/catalog/nodes``, ``/v1/catalog/service/<name>``
for every service, and ``/v1/health/state/any``. Rules:

* the ``consul`` service and ``connect-proxy`` registrations are not services of their own;
  each sidecar proxy is folded into the instance it fronts (``Proxy.DestinationServiceID`` on
  the same node, else a unique ``Proxy.DestinationServiceName`` on that node);
* ``mesh_address``/``mesh_port`` come from the sidecar registration (its address, else its node's);
  upstreams from the sidecar's ``Proxy.Upstreams``; ``local_service_address``/``port`` from
  ``Proxy.LocalServiceAddress``/``LocalServicePort`` (default 127.0.0.1 and the service port);
* an instance without a sidecar is not in the mesh (it has no mesh port) and is left out, except
  an ``ingress-gateway`` or ``mesh-gateway``, which is its own proxy (mesh port = its service port; a mesh
  gateway's LAN and WAN addresses come from its tagged addresses ``lan``/``wan``, else its service address);
* an upstream's datacenter is its ``Datacenter``, else its ``DestinationPeer`` (a peer is read as the
  datacenter of that name, see :mod:`._consul_datacenters`); its mesh gateway mode its ``MeshGateway.Mode``,
  else the proxy's;
* ``healthy`` means every check of the instance, of its sidecar proxy and of its node is passing: the
  sidecar's own checks count as Consul counts them for ``/v1/health/connect/<service>`` (the connect
  endpoint answers with the proxy instances, their checks and their node's checks, so a critical sidecar,
  e.g. its "Connect Sidecar Listening" TCP check when Envoy is down, takes the instance out, as in
  Consul's UI since consul#12279: "if the proxy instance is unhealthy then so is the service instance").
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

from ..logs import escape_control
from ..naming import dns_label_problem
from .model import DEFAULT_DATACENTER, MESH_GATEWAY, MESH_GATEWAY_MODES, Catalog, Node, ServiceInstance, Upstream

log = logging.getLogger("meshcore.catalog.consul")

IGNORED_SERVICES = frozenset({"consul"})
PROXY_KIND = "connect-proxy"
SELF_PROXIED_KINDS = frozenset({"ingress-gateway", MESH_GATEWAY})


def _meta(raw: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (raw or {}).items()))


def mesh_gateway_mode(raw: Mapping | None, where: str) -> str:
    """``MeshGateway.Mode`` of a proxy or upstream: "", none, local or remote (Consul's ``default`` is "")."""
    mode = str((raw or {}).get("Mode") or "").strip().lower()
    mode = "" if mode == "default" else mode
    if mode not in MESH_GATEWAY_MODES:
        raise ValueError(f"{where} MeshGateway.Mode {mode!r}: use none, local or remote")
    return mode


def _mode_and_scope(own: str, proxy_mode: str) -> dict[str, str]:
    """An upstream's mode and which registration set it: its own, else its proxy's (Consul's first two rungs)."""
    if own:
        return {"mesh_gateway": own, "mesh_gateway_scope": "upstream"}
    return {"mesh_gateway": proxy_mode, "mesh_gateway_scope": "proxy" if proxy_mode else ""}


def upstreams_of(proxy: Mapping | None) -> tuple[Upstream, ...]:
    """``Proxy.Upstreams`` of a proxy registration -> sorted Upstreams (service upstreams only)."""
    out = []
    default_mode = mesh_gateway_mode((proxy or {}).get("MeshGateway"), "proxy")
    for u in (proxy or {}).get("Upstreams") or ():
        if (u.get("DestinationType") or "service") != "service" or not u.get("DestinationName"):
            continue
        out.append(Upstream(
            destination_name=u["DestinationName"],
            local_bind_port=int(u.get("LocalBindPort") or 0),
            local_bind_address=u.get("LocalBindAddress") or "127.0.0.1",
            datacenter=u.get("Datacenter") or u.get("DestinationPeer") or None,
            **_mode_and_scope(mesh_gateway_mode(u.get("MeshGateway"), f"upstream {u['DestinationName']!r}"),
                              default_mode),
        ))
    return tuple(sorted(out))


def tagged_address(tagged: Mapping | None, names: tuple[str, ...]) -> tuple[str, int] | None:
    """The first of ``names`` among a service's tagged addresses as (address, port); keys in either case."""
    for name in names:
        entry = (tagged or {}).get(name)
        if isinstance(entry, Mapping):
            address = entry.get("Address") or entry.get("address") or ""
            port = int(entry.get("Port") or entry.get("port") or 0)
            if address and port:
                return address, port
    return None


def _health(checks: Iterable[Mapping]) -> tuple[dict[tuple[str, str], bool], dict[str, bool]]:
    """(node, service id) -> all passing; node -> all node-level checks passing."""
    per_service: dict[tuple[str, str], bool] = {}
    per_node: dict[str, bool] = {}
    for c in checks:
        ok = c.get("Status") == "passing"
        node = c.get("Node") or ""
        sid = c.get("ServiceID") or ""
        if sid:
            per_service[(node, sid)] = per_service.get((node, sid), True) and ok
        else:
            per_node[node] = per_node.get(node, True) and ok
    return per_service, per_node


def _sidecar_index(entries: Iterable[Mapping]) -> tuple[dict[tuple[str, str], Mapping], dict[tuple[str, str], list[Mapping]]]:
    by_id: dict[tuple[str, str], Mapping] = {}
    by_name: dict[tuple[str, str], list[Mapping]] = {}
    for e in sorted(entries, key=lambda e: (e.get("Node", ""), e.get("ServiceID", ""))):
        if (e.get("ServiceKind") or "") != PROXY_KIND:
            continue
        proxy = e.get("ServiceProxy") or {}
        node = e.get("Node", "")
        if proxy.get("DestinationServiceID"):
            key = (node, proxy["DestinationServiceID"])
            if key in by_id:
                log.warning("two sidecar proxies front one instance; using the first node=%s service_id=%s "
                            "proxies=%s,%s", node, key[1], by_id[key].get("ServiceID"), e.get("ServiceID"))
                continue
            by_id[key] = e
        if proxy.get("DestinationServiceName"):
            by_name.setdefault((node, proxy["DestinationServiceName"]), []).append(e)
    return by_id, by_name


def _instance(e: Mapping, node_objs: Mapping[str, Node], per_service: Mapping[tuple[str, str], bool],
              per_node: Mapping[str, bool], by_id: Mapping[tuple[str, str], Mapping],
              by_name: Mapping[tuple[str, str], list[Mapping]],
              datacenter: str = DEFAULT_DATACENTER) -> ServiceInstance | None:
    """One catalog entry as a mesh instance (None: not a meshcore workload, e.g. a sidecar or no sidecar)."""
    kind = e.get("ServiceKind") or ""
    name = e.get("ServiceName") or ""
    if kind == PROXY_KIND or name in IGNORED_SERVICES:
        return None
    node = e.get("Node") or ""
    # The names become SPIFFE ID path segments, file names on the VMs and log fields: the same DNS-label rule
    # as for every other source (Consul itself accepts almost any string and only warns about DNS).
    for what, value in (("node name", node), ("service name", name)):
        problem = dns_label_problem(value)
        if problem:
            raise ValueError(f"{what} {value!r} {problem}")
    node_address = e.get("Address") or node_objs[node].address
    address = e.get("ServiceAddress") or node_address
    sidecar_id = ""
    wan_address, wan_port = "", 0
    if kind in SELF_PROXIED_KINDS:
        proxy = e.get("ServiceProxy") or {}
        mesh_address, mesh_port = address, int(e.get("ServicePort") or 0)
        if kind == MESH_GATEWAY:
            tagged = e.get("ServiceTaggedAddresses")
            mesh_address, mesh_port = tagged_address(tagged, ("lan", "lan_ipv4")) or (mesh_address, mesh_port)
            wan_address, wan_port = tagged_address(tagged, ("wan", "wan_ipv4")) or (mesh_address, mesh_port)
    elif kind == "":
        sidecar = by_id.get((node, e.get("ServiceID", "")))
        if sidecar is None:
            candidates = by_name.get((node, name), [])
            sidecar = candidates[0] if len(candidates) == 1 else None
        if sidecar is None:
            log.debug("instance has no sidecar proxy; not in the mesh node=%s service=%s id=%s",
                      node, name, e.get("ServiceID"))
            return None
        proxy = sidecar.get("ServiceProxy") or {}
        sidecar_id = sidecar.get("ServiceID") or ""
        mesh_address = sidecar.get("ServiceAddress") or node_address
        mesh_port = int(sidecar.get("ServicePort") or 0)
    else:
        return None  # terminating/api gateways are not meshcore workloads
    healthy = per_service.get((node, e.get("ServiceID", "")), True) and per_node.get(node, True)
    if sidecar_id and healthy and not per_service.get((node, sidecar_id), True):
        healthy = False  # its sidecar proxy is not (the app may be fine, but no request reaches it)
        log.debug("sidecar proxy not passing: instance unhealthy node=%s service=%s id=%s sidecar=%s",
                  node, name, e.get("ServiceID"), sidecar_id)
    return ServiceInstance(
        service=name,
        id=e.get("ServiceID") or name,
        node=node,
        port=int(proxy.get("LocalServicePort") or e.get("ServicePort") or 0),
        mesh_address=mesh_address,
        mesh_port=mesh_port,
        local_service_address=proxy.get("LocalServiceAddress") or "127.0.0.1",
        address=address,
        kind=kind,
        tags=tuple(e.get("ServiceTags") or ()),
        meta=_meta(e.get("ServiceMeta")),
        healthy=healthy,
        upstreams=upstreams_of(proxy),
        datacenter=e.get("Datacenter") or node_objs[node].datacenter or datacenter,
        wan_address=wan_address,
        wan_port=wan_port,
    )


def assemble_catalog(
    nodes: Iterable[Mapping],
    services: Mapping[str, Iterable[Mapping]],
    checks: Iterable[Mapping],
) -> Catalog:
    """Build the catalog (see module docstring). ``services`` maps service name -> catalog entries."""
    return assemble_catalog_reporting(nodes, services, checks)[0]


def assemble_catalog_reporting(
    nodes: Iterable[Mapping],
    services: Mapping[str, Iterable[Mapping]],
    checks: Iterable[Mapping],
    *,
    datacenter: str | None = None,
) -> tuple[Catalog, tuple[tuple[str, str], ...]]:
    """:func:`assemble_catalog`, plus the entries left out as ``(where, why)`` for the source's health
    (``where`` is ``node/<node>/service/<id>``), sorted. ``datacenter``: the one these answers come from
    (``?dc=``), for nodes and entries that do not say (Consul's do)."""
    default_dc = datacenter or DEFAULT_DATACENTER
    node_objs: dict[str, Node] = {}
    for n in nodes:
        node_objs[n["Node"]] = Node(name=n["Node"], address=n.get("Address") or "",
                                    datacenter=n.get("Datacenter") or default_dc, meta=_meta(n.get("Meta")))
    entries = [e for name, lst in services.items() for e in (lst or ()) if name not in IGNORED_SERVICES]
    for e in entries:  # a node registered between our reads: take it from the service entry
        if e.get("Node") and e["Node"] not in node_objs:
            node_objs[e["Node"]] = Node(name=e["Node"], address=e.get("Address") or "",
                                        datacenter=e.get("Datacenter") or default_dc, meta=_meta(e.get("NodeMeta")))
    per_service, per_node = _health(checks)
    by_id, by_name = _sidecar_index(entries)

    instances = []
    rejected: dict[str, str] = {}
    for e in entries:
        try:
            inst = _instance(e, node_objs, per_service, per_node, by_id, by_name, default_dc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # One malformed entry (a registration Consul accepted but meshcore cannot use) is skipped, not the read.
            where = f"node/{e.get('Node')}/service/{e.get('ServiceID') or e.get('ServiceName')}"
            rejected[escape_control(where)] = escape_control(f"{type(exc).__name__}: {exc}")
            continue
        if inst is not None:
            instances.append(inst)
    return Catalog.of(node_objs.values(), instances), tuple(sorted(rejected.items()))
