"""Gateway servers with ``tls.mode: PASSTHROUGH``: the client's TLS goes to the backend untouched, routed by SNI
(pure).

As in Istio's "ingress gateway without TLS termination" task: the VirtualServices bound to the Gateway route the
server's hosts with ``tls[]`` rules, each ``match[]`` alternative naming ``sniHosts`` (and optionally the
``gateways`` it applies to, the server's ``port``, the gateway's ``sourceLabels``/``sourceNamespace``). Every
alternative becomes one filter chain of the server's port whose ``server_names`` are the SNI names the server's
hosts cover, forwarding the bytes with a (weighted) tcp_proxy to the destinations' clusters. The backend presents its
own certificate and checks its own clients; the gateway sees only the ClientHello's server name.

A destination must speak TLS itself: a ServiceEntry host's TLS (or TCP) port, or a mesh service registered with
protocol ``tcp`` (its sidecar forwards the bytes to the app inside the mesh's mTLS). An HTTP mesh service would get
TLS bytes where it expects HTTP, so that route refuses the proxy's config with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

from ...catalog.model import Upstream
from ...resources.model import Resource
from ...snapshot import MeshSnapshot
from ...xds.generate import vocab as c
from ..service_entry.clusters import entry_of, upstream_port
from ..virtual_service.spec import Destination, VirtualServiceSpec
from ..virtual_service.spec import spec_of as vs_spec
from ..virtual_service.tls_routes import DestinationPolicy, tls_chains
from .schema import gateway_ref
from .servers import BoundServer, Port, host_intersection, namespace_ok

DestinationCluster = Callable[[Destination], str]


def _match_gateways(vs: Resource, rule: int, match: int) -> tuple[str, ...] | None:
    """A ``tls[].match[]`` alternative's own ``gateways`` as ``<ns>/<name>`` (``mesh`` as it is); None: the
    VirtualService's."""
    raw = ((vs.spec or {}).get("tls") or [])[rule]["match"][match].get("gateways") or ()
    return tuple(g if g == "mesh" else gateway_ref(vs.namespace, g) for g in raw) or None


def _covered(server: BoundServer, vs: Resource, sni: str) -> str | None:
    """The SNI name ``sni`` as one of ``server``'s hosts covers it (the more specific of the two), if one does."""
    for ref in server.server.hosts:
        if namespace_ok(ref, server.gateway, vs):
            name = host_intersection(ref.host, sni)
            if name is not None:
                return name
    return None


def passthrough_problem(snapshot: MeshSnapshot, host: str, port_number: int | None = None) -> str | None:
    """Why ``host`` (on the route's ``destination.port``, else a ServiceEntry's first port) cannot take a client's
    TLS passed through (None when it can): an HTTP port of a ServiceEntry host, or a mesh service whose sidecar
    speaks HTTP to it. A port the entry lacks is the port cluster's refusal (:func:`.ports.port_cluster`)."""
    entry = entry_of(snapshot, host)
    if entry is not None:
        port = entry.port(port_number) if port_number is not None else upstream_port(entry, 0)
        if port is None or port.family != "http":
            return None
        return (f"PASSTHROUGH route to {host!r}: the ServiceEntry's port {port.number} is {port.protocol}, and the "
                "gateway forwards the client's TLS as it is; "
                + ("route to one of its TLS or TCP ports (destination.port)" if port_number is not None
                   else "name its TLS port (destination.port), or list that port first"))
    if "." in host:
        return None  # neither a service nor a declared host: validation says so
    protocol = c.upstream_protocol(snapshot, Upstream(host, 0))
    if protocol == "tcp":
        return None
    return (f"PASSTHROUGH route to mesh service {host!r} ({protocol}): its sidecar would read the client's TLS bytes "
            f"as {protocol}; register the backend with protocol tcp (Consul meta protocol: tcp) and let it terminate "
            "TLS itself, or terminate TLS at the gateway (protocol HTTPS, mode SIMPLE)")


def as_bound(b: BoundServer, vs: Resource) -> VirtualServiceSpec:
    """``vs``'s spec as ``b`` sees it: each ``tls[].match[]`` alternative keeps the SNI names ``b``'s hosts cover,
    none when it names other gateways or only ``mesh`` (alternatives stay in place, so chain names keep their
    indices)."""
    spec = vs_spec(vs)
    rules = []
    for i, rule in enumerate(spec.tls):
        matches = []
        for j, m in enumerate(rule.match):
            only = _match_gateways(vs, i, j)
            names = () if only is not None and b.ref not in only else tuple(sorted(
                {n for n in (_covered(b, vs, sni) for sni in m.sni_hosts) if n is not None}))
            matches.append(replace(m, sni_hosts=names))
        rules.append(replace(rule, match=tuple(matches)))
    return replace(spec, tls=tuple(rules))


def passthrough_chains(port: Port, bound: Sequence[tuple[Resource, tuple[str, ...]]], cluster_for: DestinationCluster,
                       caller: tuple[Mapping[str, str], str],
                       policy_for: DestinationPolicy | None = None) -> list[c.ChainDraft]:
    """The SNI-matched tcp_proxy chains of ``port``'s PASSTHROUGH servers. ``bound``: the VirtualServices with the
    Gateways they bind to (``<ns>/<name>``), by (namespace, name); ``caller``: the gateway instance's labels and
    namespace (for ``sourceLabels``/``sourceNamespace``). A server name an earlier rule claims is left out of later
    ones, as Istio's first-match order (Envoy refuses two chains with one name)."""
    claimed: set[str] = set()
    out: list[c.ChainDraft] = []
    for b in port.servers:
        if b.server.passes_through:
            out += [chain for vs, gateways in bound if b.ref in gateways
                    for chain in tls_chains(f"{b.ref}/{vs.namespace}/{vs.name}", as_bound(b, vs), cluster_for, caller,
                                            port.port, claimed, policy_for=policy_for, mesh=False)]
    return out


__all__ = ["as_bound", "passthrough_chains", "passthrough_problem", "DestinationCluster"]
