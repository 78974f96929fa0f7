"""Which identities the CA may sign for a node: a pure decision over the catalog."""

from __future__ import annotations

from meshcore import naming
from meshcore.catalog.model import Catalog
from meshcore.errors import SigningRefused

from ._spiffeid import parse_workload_id


def check_workload_request(catalog: Catalog, node: str, spiffe_id: str, trust_domain: str) -> None:
    """Allow ``spiffe_id`` for ``node`` only if it is the identity of a service registered there.

    The identity of an instance is ``naming.workload_spiffe_id(trust_domain, namespace, service_account)``.
    Raises :class:`SigningRefused` with the reason when the node is unknown, the ID is malformed or
    in another trust domain, or no instance on the node has that identity. Pure: no IO.
    """
    sid = parse_workload_id(spiffe_id, SigningRefused)
    if sid.trust_domain.name != trust_domain:
        raise SigningRefused(
            f"{spiffe_id} is in trust domain {sid.trust_domain.name!r}, this CA signs only {trust_domain!r}"
        )
    instances = catalog.on_node(node)
    if catalog.node(node) is None and not instances:
        raise SigningRefused(
            f"node {node!r} is not in the catalog; register it (and its services) in Consul before requesting certificates"
        )
    allowed = {
        naming.workload_spiffe_id(trust_domain, inst.namespace, inst.service_account) for inst in instances
    }
    if spiffe_id not in allowed:
        services = sorted({inst.service for inst in instances})
        there = ", ".join(services) if services else "none"
        raise SigningRefused(
            f"{spiffe_id} is not the identity of any service registered on node {node}; services there: {there}"
        )
