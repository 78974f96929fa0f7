"""check_workload_request: a node gets only the identities of services registered on it."""

from __future__ import annotations

import pytest

from meshcore.ca import check_workload_request
from meshcore.catalog.model import Catalog, Node, ServiceInstance
from meshcore.errors import SigningRefused

TD = "cluster.local"


def _inst(service: str, node: str, **meta: str) -> ServiceInstance:
    return ServiceInstance(
        service=service, id=f"{service}-{node}", node=node, port=8080, mesh_address="10.0.0.1", mesh_port=21000,
        meta=tuple(sorted(meta.items())),
    )


CATALOG = Catalog.of(
    [Node("vm1", "10.0.0.1"), Node("vm2", "10.0.0.2"), Node("empty", "10.0.0.3")],
    [
        _inst("web", "vm1"),
        _inst("api", "vm1", **{"service-account": "api-sa", "namespace": "shop"}),
        _inst("db", "vm2"),
    ],
)


def test_accepts_a_service_on_the_node() -> None:
    check_workload_request(CATALOG, "vm1", "spiffe://cluster.local/ns/default/sa/web", TD)
    check_workload_request(CATALOG, "vm1", "spiffe://cluster.local/ns/shop/sa/api-sa", TD)
    check_workload_request(CATALOG, "vm2", "spiffe://cluster.local/ns/default/sa/db", TD)


def test_refuses_a_service_registered_on_another_node() -> None:
    with pytest.raises(SigningRefused) as err:
        check_workload_request(CATALOG, "vm1", "spiffe://cluster.local/ns/default/sa/db", TD)
    assert str(err.value) == (
        "spiffe://cluster.local/ns/default/sa/db is not the identity of any service registered on node vm1; "
        "services there: api, web"
    )


def test_refuses_the_service_name_when_its_account_differs() -> None:
    with pytest.raises(SigningRefused, match="services there: api, web"):
        check_workload_request(CATALOG, "vm1", "spiffe://cluster.local/ns/default/sa/api", TD)


def test_refuses_other_trust_domain_unknown_node_and_malformed_ids() -> None:
    with pytest.raises(SigningRefused, match="trust domain 'evil.org'"):
        check_workload_request(CATALOG, "vm1", "spiffe://evil.org/ns/default/sa/web", TD)
    with pytest.raises(SigningRefused, match="node 'vm9' is not in the catalog"):
        check_workload_request(CATALOG, "vm9", "spiffe://cluster.local/ns/default/sa/web", TD)
    with pytest.raises(SigningRefused, match="services there: none"):
        check_workload_request(CATALOG, "empty", "spiffe://cluster.local/ns/default/sa/web", TD)
    with pytest.raises(SigningRefused, match="malformed"):
        check_workload_request(CATALOG, "vm1", "web", TD)
