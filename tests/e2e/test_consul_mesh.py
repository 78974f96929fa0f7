"""End to end with Consul as the catalog: the VM agent registers its services and checks in Consul,
the control plane watches Consul, Envoy follows health changes.

Runs against the Consul test double, or against the real Consul agent at ``CONSUL_HTTP_ADDR``
(its node name and address are used for the VM then).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from tests.consul_double.server import ConsulDouble

from ._topology import free_port, loopback

NODE_ADDRESS = loopback(31)


@pytest.fixture(scope="module")
def consul():
    if os.environ.get("CONSUL_HTTP_ADDR"):
        addr = os.environ["CONSUL_HTTP_ADDR"]
        yield (addr if "://" in addr else f"http://{addr}"), os.environ.get("CONSUL_HTTP_TOKEN")
        return
    double = ConsulDouble(node="vm-consul", node_address=NODE_ADDRESS)
    yield double.start(), None
    double.stop()


def _consul_get(consul, path):
    address, token = consul
    r = requests.get(address + path, headers={"X-Consul-Token": token} if token else {}, timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def mesh(consul, tmp_path_factory):
    address, token = consul
    agent_self = _consul_get(consul, "/v1/agent/self")
    node = agent_self["Config"]["NodeName"]
    node_addr = agent_self.get("Member", {}).get("Addr") or NODE_ADDRESS
    state = tmp_path_factory.mktemp("consul-mesh")
    node_dir = state / "consul.d" / node
    node_dir.mkdir(parents=True)
    ports = {name: free_port(node_addr) for name in (
        "pp", "pp_mesh", "details", "details_mesh", "r1", "r1_mesh", "r2", "r2_mesh",
        "up_details", "up_reviews", "gw")}

    def svc(name, sid, port, mesh_port, version, upstreams=(), checks=None):
        body = {"name": name, "id": sid, "port": ports[port], "meta": {"version": version},
                "connect": {"sidecar_service": {"port": ports[mesh_port], "proxy": {
                    "local_service_address": node_addr,
                    "upstreams": [{"destination_name": u, "local_bind_address": node_addr,
                                   "local_bind_port": ports[p]} for u, p in upstreams]}}}}
        if checks:
            body["checks"] = checks
        (node_dir / f"{sid}.json").write_text(json.dumps({"service": body}, indent=2))

    (node_dir / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": node_addr}))
    svc("productpage", "productpage-v1", "pp", "pp_mesh", "v1", [("details", "up_details"), ("reviews", "up_reviews")])
    svc("details", "details-v1", "details", "details_mesh", "v1")
    svc("reviews", "reviews-v1", "r1", "r1_mesh", "v1")
    # A second reviews instance gated by a TTL check the test drives: critical until passed, as in Consul.
    svc("reviews", "reviews-v1b", "r2", "r2_mesh", "v1", checks=[{"id": "reviews-v1b-ttl", "name": "ttl", "ttl": "10m"}])
    (node_dir / "ingress-gateway.json").write_text(json.dumps({"service": {
        "name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": ports["gw"],
        "proxy": {"upstreams": [{"destination_name": "productpage", "local_bind_address": node_addr,
                                 "local_bind_port": ports["gw"]}]}}}))
    env = {"CONSUL_HTTP_ADDR": address}
    if token:
        env["CONSUL_HTTP_TOKEN"] = token
    layout = MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d", catalog_source="consul", env=env,
        xds_bind=f"127.0.0.1:{free_port('127.0.0.1')}", api_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
        http_bind=f"127.0.0.1:{free_port('127.0.0.1')}", admin={node: f"{node_addr}:{free_port(node_addr)}"},
        agent_refresh="1s",
    )
    m = LocalMesh(layout, progress=lambda msg: print("consul mesh:", msg, flush=True))
    m.url = f"http://{node_addr}:{ports['gw']}/productpage?format=json"
    m.node = node
    try:
        m.up(wait_url=m.url)
    except BaseException:
        for log in sorted((state / "logs").glob("*.log")):
            print(f"----- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        m.down()
        raise
    yield m
    m.down()
    for sid in ("productpage-v1", "details-v1", "reviews-v1", "reviews-v1b", "ingress-gateway", "ratings-v1",
                f"meshcore-agent-{node}"):
        requests.put(f"{address}/v1/agent/service/deregister/{sid}",
                     headers={"X-Consul-Token": token} if token else {}, timeout=10)


def test_agent_registered_services_and_checks_in_consul(mesh, consul):
    services = _consul_get(consul, "/v1/agent/services")
    for sid in ("productpage-v1", "details-v1", "reviews-v1", "reviews-v1b", "ingress-gateway",
                f"meshcore-agent-{mesh.node}"):  # the agent's own metrics service, for consul_sd
        assert sid in services, f"{sid} not registered in Consul"
    assert "productpage-v1-sidecar-proxy" in services
    checks = _consul_get(consul, "/v1/agent/checks")
    assert "reviews-v1b-ttl" in checks


def test_request_through_mesh_with_consul_catalog(mesh):
    status, body = http_get(mesh.url)
    assert status == 200
    data = json.loads(body)
    assert data["details"]["service"] == "details"
    assert data["reviews"]["service"] == "reviews"


def _reviews_instances(url, n=30):
    return {json.loads(http_get(url)[1])["reviews"].get("instance") for _ in range(n)}


def test_health_check_drives_endpoints_within_two_seconds(mesh, consul):
    address, token = consul
    headers = {"X-Consul-Token": token} if token else {}
    assert _reviews_instances(mesh.url) == {"reviews-v1"}, "a critical TTL check must keep reviews-v1b out"
    requests.put(f"{address}/v1/agent/check/pass/reviews-v1b-ttl", headers=headers, timeout=10).raise_for_status()
    started = time.monotonic()
    wait_until(lambda: "reviews-v1b" in _reviews_instances(mesh.url, 10), 30, "reviews-v1b to receive traffic",
               interval=0.05)
    became_healthy = time.monotonic() - started
    requests.put(f"{address}/v1/agent/check/fail/reviews-v1b-ttl", headers=headers, timeout=10).raise_for_status()
    started = time.monotonic()
    wait_until(lambda: _reviews_instances(mesh.url, 10) == {"reviews-v1"}, 30, "reviews-v1b to leave the mesh",
               interval=0.05)
    print(f"health -> Envoy: passing {became_healthy * 1000:.0f} ms, critical {(time.monotonic() - started) * 1000:.0f} ms")


def _envoy_stat(admin: str, name: str) -> int:
    status, body = http_get(f"http://{admin}/stats?format=json&filter=^{name}$")
    stats = json.loads(body).get("stats", []) if status == 200 else []
    return int(stats[0]["value"]) if stats else 0


def test_a_new_service_reaches_envoy_without_a_nack(mesh):
    """The NACK race: a service dropped into the agent's --consul-services-dir gets a listener naming its
    SVID file as soon as the control plane sees the registration; the agent has written that file first
    (a pending certificate, then the real SVID), so Envoy accepts every listener update."""
    admin = mesh.layout.admin[mesh.node]
    node_dir = mesh.layout.catalog_dir / mesh.node
    rejected = _envoy_stat(admin, "listener_manager.lds.update_rejected")
    host = admin.rsplit(":", 1)[0]
    body = {"name": "ratings", "id": "ratings-v1", "port": free_port(host), "meta": {"version": "v1"},
            "connect": {"sidecar_service": {"port": free_port(host), "proxy": {"local_service_address": host}}}}
    (node_dir / "ratings-v1.json").write_text(json.dumps({"service": body}))

    def listener_and_svid():
        status, dump = http_get(f"http://{admin}/config_dump?resource=dynamic_listeners")
        certs = http_get(f"http://{admin}/certs")[1].decode()
        return status == 200 and b"inbound:ratings-v1" in dump and "/sa/ratings" in certs

    try:
        wait_until(listener_and_svid, 30, "ratings' inbound listener and SVID in Envoy", interval=0.1)
        assert _envoy_stat(admin, "listener_manager.lds.update_rejected") == rejected, \
            "Envoy rejected a listener update while the new service's SVID file was missing"
    finally:
        (node_dir / "ratings-v1.json").unlink()
