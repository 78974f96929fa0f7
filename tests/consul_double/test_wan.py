"""WAN-federated doubles: ``?dc=`` reaches the other datacenter's catalog and health, as on joined Consul servers."""

from __future__ import annotations

import threading
import time

import requests

from tests.consul_double import ConsulDouble


def _register(address: str, node: str, service: str) -> None:
    body = {"Node": node, "Address": "10.0.0.1", "Service": {"ID": service, "Service": service, "Port": 80}}
    requests.put(address + "/v1/catalog/register", json=body, timeout=10).raise_for_status()


def test_dc_query_forwarded_to_the_joined_datacenter_and_blocks_there():
    with ConsulDouble(node="s1", datacenter="dc1") as one, ConsulDouble(node="s2", datacenter="dc2") as two:
        unknown = requests.get(one.address + "/v1/catalog/services", params={"dc": "dc2"}, timeout=10)
        assert unknown.status_code == 500 and "No path to datacenter" in unknown.text  # not joined yet
        one.join_wan(two)
        assert requests.get(one.address + "/v1/catalog/datacenters", timeout=10).json() == ["dc1", "dc2"]
        assert requests.get(two.address + "/v1/catalog/datacenters", timeout=10).json() == ["dc2", "dc1"]
        _register(two.address, "vm-b", "store")
        _register(one.address, "vm-a", "web")

        remote = requests.get(one.address + "/v1/catalog/service/store", params={"dc": "dc2"}, timeout=10)
        assert remote.status_code == 200
        assert [(e["Node"], e["Datacenter"]) for e in remote.json()] == [("vm-b", "dc2")]
        assert remote.headers["X-Consul-Index"] == requests.get(two.address + "/v1/catalog/service/store",
                                                                timeout=10).headers["X-Consul-Index"]
        own = requests.get(one.address + "/v1/catalog/services", params={"dc": "dc1"}, timeout=10).json()
        assert "web" in own and "store" not in own
        health = requests.get(one.address + "/v1/health/service/store", params={"dc": "dc2"}, timeout=10).json()
        assert health[0]["Node"]["Datacenter"] == "dc2"

        # a blocking query through dc1 waits on dc2's index and returns when dc2 changes
        index = int(remote.headers["X-Consul-Index"])
        got: dict = {}

        def block() -> None:
            got["r"] = requests.get(one.address + "/v1/catalog/services",
                                    params={"dc": "dc2", "index": index, "wait": "20s"}, timeout=30)

        t = threading.Thread(target=block, daemon=True)
        started = time.monotonic()
        t.start()
        time.sleep(0.3)
        assert "r" not in got  # still blocked at dc2
        _register(two.address, "vm-b2", "cart")
        t.join(timeout=15)
        assert "cart" in got["r"].json() and time.monotonic() - started < 10
        assert int(got["r"].headers["X-Consul-Index"]) > index
