"""The Consul source reading several datacenters: ``?dc=`` on WAN-joined Consuls, or one address each."""

from __future__ import annotations

import threading

import pytest
import requests

from meshcore.catalog._consul_assemble import assemble_catalog
from meshcore.catalog._consul_datacenters import DatacenterTargets
from meshcore.catalog.consul import ConsulCatalogSource, ConsulSettings
from meshcore.catalog.model import Upstream
from meshcore.errors import ConfigError, ConsulError
from tests.consul_double import ConsulDouble


def _register(address: str, node: str, ip: str, service: dict) -> None:
    body = {"Node": node, "Address": ip, "Service": service}
    requests.put(address + "/v1/catalog/register", json=body, timeout=10).raise_for_status()


def _mesh_service(address: str, node: str, ip: str, name: str, upstreams=(), proxy_extra=None) -> None:
    _register(address, node, ip, {"ID": name, "Service": name, "Port": 8080})
    proxy = {"DestinationServiceName": name, "DestinationServiceID": name, "LocalServicePort": 8080,
             "Upstreams": list(upstreams), **(proxy_extra or {})}
    _register(address, node, ip, {"ID": f"{name}-sidecar-proxy", "Service": f"{name}-sidecar-proxy",
                                  "Kind": "connect-proxy", "Port": 21000, "Proxy": proxy})


def _gateway(address: str, node: str, lan: str, wan: str, name: str = "mesh-gateway") -> None:
    _register(address, node, lan, {"ID": name, "Service": name, "Kind": "mesh-gateway",
                                   "Port": 8443, "TaggedAddresses": {"lan": {"Address": lan, "Port": 8443},
                                                                     "wan": {"Address": wan, "Port": 9443}}})


@pytest.fixture
def doubles():
    with ConsulDouble(node="s1", datacenter="dc1") as one, ConsulDouble(node="s2", datacenter="dc2") as two:
        one.join_wan(two)
        yield one, two


def test_parse_targets_both_forms():
    base = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "https://consul.dc1:8501", "CONSUL_HTTP_TOKEN": "t"})
    wan = DatacenterTargets.parse("dc1, dc2").targets(base)
    assert [(dc, s.address, s.datacenter, s.token) for dc, s in wan] == [
        ("dc1", "https://consul.dc1:8501", "dc1", "t"), ("dc2", "https://consul.dc1:8501", "dc2", "t")]
    split = DatacenterTargets.parse("dc1,dc2=10.0.2.5:8500").targets(base)
    assert [s.address for _, s in split] == ["https://consul.dc1:8501", "https://10.0.2.5:8500"]
    for bad, match in (("DC1", "lowercase"), ("dc1,dc1", "twice"), (" , ", "no Consul datacenter"),
                       ("dc2=http://:1", "host")):
        with pytest.raises(ConfigError, match=match):
            DatacenterTargets.parse(bad)


def test_reads_every_datacenter_by_dc_and_wakes_on_a_remote_change(doubles):
    one, two = doubles
    _mesh_service(one.address, "vm-a", "10.1.0.1", "web",
                  upstreams=[{"DestinationName": "store", "Datacenter": "dc2", "LocalBindPort": 9001,
                              "MeshGateway": {"Mode": "remote"}},
                             {"DestinationName": "api", "DestinationPeer": "dc2", "LocalBindPort": 9002}],
                  proxy_extra={"MeshGateway": {"Mode": "local"}})
    _gateway(one.address, "gw-a", "10.1.0.9", "192.0.2.1")
    _mesh_service(two.address, "vm-b", "10.2.0.1", "store")
    _gateway(two.address, "gw-b", "10.2.0.9", "192.0.2.2", name="gateway-west")  # a gateway is its kind
    source = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": one.address}),
                                 datacenters=DatacenterTargets.parse("dc1,dc2"))
    try:
        first = source.poll(None, 0)
        cat = first.catalog
        assert {(n.name, n.datacenter) for n in cat.nodes} >= {("vm-a", "dc1"), ("gw-a", "dc1"), ("vm-b", "dc2"),
                                                              ("gw-b", "dc2")}
        assert [(i.service, i.datacenter) for i in cat.instances_of("store")] == [("store", "dc2")]
        web = cat.instances_of("web")[0]
        assert web.upstreams == (  # the proxy's mode for api, store's own (which registration said it, too)
            Upstream("api", 9002, datacenter="dc2", mesh_gateway="local", mesh_gateway_scope="proxy"),
            Upstream("store", 9001, datacenter="dc2", mesh_gateway="remote", mesh_gateway_scope="upstream"))
        assert cat.services_of_kind("mesh-gateway") == ("gateway-west", "mesh-gateway")
        [gw] = cat.instances_of("gateway-west")
        assert (gw.kind, gw.mesh_address, gw.mesh_port, gw.wan_address, gw.wan_port) == (
            "mesh-gateway", "10.2.0.9", 8443, "192.0.2.2", 9443)
        assert set(first.extra["indexes"]) == {f"{dc}/{e}" for dc in ("dc1", "dc2")
                                               for e in ("nodes", "services", "checks")}
        assert "dc2" in source.health().kind

        out: dict = {}
        t = threading.Thread(target=lambda: out.update(u=source.poll(first.index, 20)), daemon=True)
        t.start()
        _mesh_service(two.address, "vm-b2", "10.2.0.2", "cart")  # a change in dc2 only
        t.join(timeout=15)
        assert out["u"].index > first.index
        assert [i.datacenter for i in out["u"].catalog.instances_of("cart")] == ["dc2"]
        # an index that is not this source's (another replica's sum) means a full read, not a bogus block
        fresh = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": one.address}),
                                    datacenters=DatacenterTargets.parse("dc1,dc2"))
        assert fresh.poll(out["u"].index, 20).catalog.instances_of("cart")
        fresh.close()
    finally:
        source.close()


def test_one_address_per_datacenter_and_a_node_name_of_another_datacenter_taken_already():
    with ConsulDouble(node="s1", datacenter="dc1") as one, ConsulDouble(node="s2", datacenter="dc2") as two:
        _mesh_service(one.address, "vm-a", "10.1.0.1", "web")
        _mesh_service(two.address, "vm-b", "10.2.0.1", "store")
        _mesh_service(two.address, "vm-a", "10.2.0.7", "dup")  # same node name as in dc1
        source = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": one.address}),
                                     datacenters=DatacenterTargets.parse(f"dc1,dc2={two.address}"))
        try:
            cat = source.poll(None, 0).catalog
            assert [i.datacenter for i in cat.instances_of("store")] == ["dc2"]
            assert cat.node("vm-a").datacenter == "dc1" and cat.node("vm-a").address == "10.1.0.1"  # the own dc's
            [dup] = cat.instances_of("dup")  # dc2's vm-a is read as vm-a.dc2, its instances with it
            assert (dup.node, dup.datacenter) == ("vm-a.dc2", "dc2") and cat.node("vm-a.dc2").address == "10.2.0.7"
            assert [i.service for i in cat.on_node("vm-a")] == ["web"]
            assert not source.health().rejected
            _mesh_service(one.address, "vm-a.dc2", "10.1.0.9", "other")  # the alias taken in dc1: left out
            cat = source.poll(None, 0).catalog
            assert not cat.instances_of("dup") and cat.node("vm-a.dc2").datacenter == "dc1"
            assert any(where == "dc2/node/vm-a" for where, _ in source.health().rejected)
        finally:
            source.close()


def test_a_datacenter_of_another_trust_domain_marks_its_instances(doubles):
    one, two = doubles
    targets = DatacenterTargets.parse("dc1,dc2@dc2.example")
    assert targets.trust_domains == (("dc2", "dc2.example"),) and targets.names == ("dc1", "dc2")
    assert DatacenterTargets.parse(f"dc1,dc2@dc2.example={two.address}").datacenters[1] == ("dc2", two.address)
    with pytest.raises(ConfigError, match="trust domain"):
        DatacenterTargets.parse("dc1,dc2@Not A Domain")
    _mesh_service(one.address, "vm-a", "10.1.0.1", "web")
    _mesh_service(two.address, "vm-b", "10.2.0.1", "store")
    source = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": one.address}), datacenters=targets)
    try:
        cat = source.poll(None, 0).catalog
        assert [(i.datacenter, i.trust_domain) for i in cat.instances_of("store")] == [("dc2", "dc2.example")]
        assert [i.trust_domain for i in cat.instances_of("web")] == [""]  # the reading control plane's own
    finally:
        source.close()


def test_bad_mesh_gateway_mode_skips_the_entry_only():
    entries = {"web": [{"Node": "n", "Address": "10.0.0.1", "ServiceID": "web", "ServiceName": "web", "ServicePort": 1}],
               "web-sidecar-proxy": [{"Node": "n", "Address": "10.0.0.1", "ServiceID": "web-sidecar-proxy",
                                      "ServiceName": "web-sidecar-proxy", "ServiceKind": "connect-proxy",
                                      "ServicePort": 2, "ServiceProxy": {
                                          "DestinationServiceID": "web", "MeshGateway": {"Mode": "sideways"}}}]}
    catalog = assemble_catalog([{"Node": "n", "Address": "10.0.0.1"}], entries, [])
    assert not catalog.instances


def test_an_unknown_datacenter_is_named_with_the_ones_consul_knows(doubles):
    one, _ = doubles
    source = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": one.address}),
                                 datacenters=DatacenterTargets.parse("dc1,dc3"))
    try:
        with pytest.raises(ConsulError, match=r"no path to datacenter 'dc3' \(it knows dc1, dc2\)"):
            source.poll(None, 0)
    finally:
        source.close()
