"""End to end: Consul config entries written through Consul's HTTP API change what real Envoys do.

One mesh (module fixture) with the Consul double as the catalog: productpage calls details and two
reviews instances (meta ``track`` stable and canary), an ingress gateway in front. The control plane
reads the config entries with blocking queries (``--consul-config-entries`` is on with the Consul
catalog); the agent registers the sidecar with a TCP check the double dials (``run_tcp_checks``).
"""

from __future__ import annotations

import json
import math
import time

import pytest
import requests

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from tests.consul_double.server import ConsulDouble

from ._topology import free_port, loopback, serving

NODE = "vm-entries"
NODE_ADDRESS = loopback(41)
STABLE_CHECK = "reviews-stable-ttl"


@pytest.fixture(scope="module")
def consul():
    double = ConsulDouble(node=NODE, node_address=NODE_ADDRESS, run_tcp_checks=True)
    yield double.start()
    double.stop()


@pytest.fixture(scope="module")
def mesh(consul, tmp_path_factory):
    state = tmp_path_factory.mktemp("consul-entries")
    node_dir = state / "consul.d" / NODE
    node_dir.mkdir(parents=True)
    ports = {name: free_port(NODE_ADDRESS) for name in (
        "pp", "pp_mesh", "details", "details_mesh", "r1", "r1_mesh", "r2", "r2_mesh", "up_details", "up_reviews",
        "gw")}

    def svc(name, sid, port, mesh_port, meta, upstreams=(), checks=()):
        body = {"name": name, "id": sid, "port": ports[port], "meta": {"version": "v1", **meta}, "checks": list(checks),
                "connect": {"sidecar_service": {"port": ports[mesh_port], "proxy": {
                    "local_service_address": NODE_ADDRESS,
                    "upstreams": [{"destination_name": u, "local_bind_address": NODE_ADDRESS,
                                   "local_bind_port": ports[p]} for u, p in upstreams]}}}}
        (node_dir / f"{sid}.json").write_text(json.dumps({"service": body}, indent=2))

    (node_dir / "node.json").write_text(json.dumps({"node_name": NODE, "advertise_addr": NODE_ADDRESS}))
    svc("productpage", "productpage-v1", "pp", "pp_mesh", {}, [("details", "up_details"), ("reviews", "up_reviews")])
    svc("details", "details-v1", "details", "details_mesh", {})
    svc("reviews", "reviews-stable", "r1", "r1_mesh", {"track": "stable"},  # failed by the failover test
        checks=[{"id": STABLE_CHECK, "name": "reviews stable TTL", "ttl": "1h"}])  # critical until passed
    svc("reviews", "reviews-canary", "r2", "r2_mesh", {"track": "canary"})
    (node_dir / "ingress-gateway.json").write_text(json.dumps({"service": {
        "name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": ports["gw"],
        "proxy": {"upstreams": [{"destination_name": "productpage", "local_bind_address": NODE_ADDRESS,
                                 "local_bind_port": ports["gw"]}]}}}))
    layout = MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d", catalog_source="consul",
        env={"CONSUL_HTTP_ADDR": consul, "MESHCORE_SIDECAR_CHECK_INTERVAL": "1s"},
        xds_bind=f"127.0.0.1:{free_port('127.0.0.1')}", api_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
        http_bind=f"127.0.0.1:{free_port('127.0.0.1')}", admin={NODE: f"{NODE_ADDRESS}:{free_port(NODE_ADDRESS)}"},
        agent_refresh="1s",
    )
    m = LocalMesh(layout, progress=lambda msg: print("consul entries mesh:", msg, flush=True))
    m.base, m.ports, m.state = f"http://{NODE_ADDRESS}:{ports['gw']}", ports, state
    m.url = m.base + "/productpage?format=json"
    with serving(m):
        # No initial Status in the definition: a re-registration (the sidecar meta's config version changes
        # with every config Envoy ACKs) keeps the state this sets, as Consul's agent does.
        wait_until(lambda: requests.put(f"{consul}/v1/agent/check/pass/{STABLE_CHECK}", timeout=5).ok, 30,
                   "reviews-stable's TTL check to be registered and passed")
        yield m


def _write(consul: str, entry: dict) -> None:
    r = requests.put(consul + "/v1/config", data=json.dumps(entry), timeout=10)
    assert r.status_code == 200 and r.json() is True, r.text


def _delete(consul: str, kind: str, name: str) -> None:
    assert requests.delete(f"{consul}/v1/config/{kind}/{name}", timeout=10).status_code == 200


def _post(url: str) -> int:
    return requests.post(url, data=b"x", timeout=5).status_code


def _reviews_instance(mesh, headers=None) -> str:
    status, body = http_get(mesh.base + "/productpage?format=json", headers=headers)
    return json.loads(body)["reviews"].get("instance", "") if status == 200 else ""


def test_l7_intention_written_through_consul_turns_post_into_403_and_back(mesh, consul):
    url = mesh.base + "/productpage"
    before = _post(url)
    assert before != 403  # the app's own answer to a POST (405)
    _write(consul, {"Kind": "service-intentions", "Name": "productpage", "Sources": [
        {"Name": "ingress-gateway", "Permissions": [{"Action": "deny", "HTTP": {"Methods": ["POST"]}}]}]})
    started = time.monotonic()
    try:
        wait_until(lambda: _post(url) == 403, 60, "a POST to be denied (403) by the intention", interval=0.05)
        took = time.monotonic() - started
        assert http_get(mesh.base + "/productpage?format=json")[0] == 200  # GET still allowed
    finally:
        _delete(consul, "service-intentions", "productpage")
    started = time.monotonic()
    wait_until(lambda: _post(url) == before, 60, "the POST to be allowed again after the delete", interval=0.05)
    print(f"intention -> Envoy: denied after {took * 1000:.0f} ms, allowed again after "
          f"{(time.monotonic() - started) * 1000:.0f} ms")


def test_splitter_router_and_import(mesh, consul, capsys, monkeypatch):
    resolver = {"Kind": "service-resolver", "Name": "reviews", "DefaultSubset": "stable", "Subsets": {
        "stable": {"Filter": "Service.Meta.track == stable"}, "canary": {"Filter": "Service.Meta.track == canary"}}}
    splitter = {"Kind": "service-splitter", "Name": "reviews", "Splits": [
        {"Weight": 80, "ServiceSubset": "stable"}, {"Weight": 20, "ServiceSubset": "canary"}]}
    router = {"Kind": "service-router", "Name": "reviews", "Routes": [
        {"Match": {"HTTP": {"Header": [{"Name": "end-user", "Exact": "jason"}]}},
         "Destination": {"ServiceSubset": "canary"}}]}
    _write(consul, resolver)
    try:
        # the resolver's default subset alone: every request to stable
        wait_until(lambda: all(_reviews_instance(mesh) == "reviews-stable" for _ in range(10)), 10,
                   "the default subset to take all of reviews' traffic", interval=0.1)
        _write(consul, splitter)
        n, p = 200, 0.2

        def split_seen():
            return any(_reviews_instance(mesh) == "reviews-canary" for _ in range(30))

        wait_until(split_seen, 60, "the splitter to send some traffic to canary", interval=0.1)
        canary = sum(_reviews_instance(mesh) == "reviews-canary" for _ in range(n))
        bound = 4.5 * math.sqrt(n * p * (1 - p))  # a false failure about once in 150000 runs
        assert abs(canary - n * p) <= bound, f"{canary}/{n} to canary, expected {n * p:.0f} +- {bound:.0f}"
        with capsys.disabled():
            print(f"splitter 80/20: {canary}/{n} requests to canary")

        _write(consul, router)
        jason = {"end-user": "jason"}
        wait_until(lambda: all(_reviews_instance(mesh, jason) == "reviews-canary" for _ in range(10)), 10,
                   "end-user: jason to be routed to canary", interval=0.1)
        assert "reviews-stable" in {_reviews_instance(mesh) for _ in range(40)}  # the others still split

        # moving to meshcore's own spelling changes nothing on any proxy
        from meshcore.cli.main import main

        monkeypatch.setenv("CONSUL_HTTP_ADDR", consul)
        capsys.readouterr()
        assert main(["consul", "import", "--dry-run", "-o", "json", "--server", mesh.cp_info["http"],
                     "--token", mesh.admin_token_file.read_text().strip()]) == 0  # the control plane's diff
        diff = json.loads(capsys.readouterr().out)
        assert diff and all(not change["added"] and not change["removed"] and not change["changed"]
                            for change in diff.values()), diff
        cp = ["--server", mesh.cp_info["http"], "--token", mesh.admin_token_file.read_text().strip()]
        assert main(["get", "VirtualService", *cp]) == 0  # meshctl get shows where they come from
        table = capsys.readouterr().out
        assert "consul-reviews" in table and "consul (service-router.reviews" in table, table
        assert main(["consul", "check", *cp]) == 0, capsys.readouterr().out  # no finding, no overlap
    finally:
        for kind in ("service-router", "service-splitter", "service-resolver"):
            _delete(consul, kind, "reviews")


def _stable_check(consul: str, verb: str) -> None:
    assert requests.put(f"{consul}/v1/agent/check/{verb}/{STABLE_CHECK}", timeout=10).status_code == 200


def test_resolver_failover_to_another_subset_when_the_first_has_no_healthy_instance(mesh, consul):
    resolver = {"Kind": "service-resolver", "Name": "reviews", "DefaultSubset": "stable", "Subsets": {
        "stable": {"Filter": "Service.Meta.track == stable"}, "canary": {"Filter": "Service.Meta.track == canary"}},
        "Failover": {"stable": {"ServiceSubset": "canary"}}}

    def all_to(instance: str) -> bool:
        return all(_reviews_instance(mesh) == instance for _ in range(10))

    _write(consul, resolver)
    try:
        wait_until(lambda: all_to("reviews-stable"), 60, "the default subset to take all traffic", interval=0.1)
        _stable_check(consul, "fail")  # stable's only instance turns critical: no healthy instance left
        started = time.monotonic()
        wait_until(lambda: all_to("reviews-canary"), 60, "stable's traffic to fail over to canary", interval=0.05)
        took = time.monotonic() - started
        _stable_check(consul, "pass")
        started = time.monotonic()
        wait_until(lambda: all_to("reviews-stable"), 60, "traffic to fail back to stable", interval=0.05)
        print(f"resolver failover: to canary after {took * 1000:.0f} ms, back to stable after "
              f"{(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        _stable_check(consul, "pass")
        _delete(consul, "service-resolver", "reviews")


def test_sidecar_meta_carries_the_config_version_envoy_acked(mesh, consul):
    admin = "http://" + mesh.layout.admin[NODE]

    def config_version() -> str:
        meta = requests.get(consul + "/v1/agent/services", timeout=10).json()["productpage-v1-sidecar-proxy"]["Meta"]
        return meta.get("meshcore-config-version", "")

    def envoy_cds_version() -> str:
        stats = requests.get(admin + "/stats?filter=cluster_manager.cds.version_text", timeout=5).text
        return stats.partition(": ")[2].strip().strip('"')

    wait_until(lambda: config_version() and config_version().split()[-1].split(":")[-1] == envoy_cds_version(), 15,
               "the sidecar's meta to carry the config version Envoy ACKed")
    before = config_version()
    _write(consul, {"Kind": "service-resolver", "Name": "details", "Subsets": {  # new clusters: a new config version
        "v1": {"Filter": "Service.Meta.version == v1"}}})
    try:
        started = time.monotonic()
        wait_until(lambda: config_version() not in ("", before), 60, "the meta to follow the new config version")
        print(f"sidecar meta meshcore-config-version followed Envoy's ACK after {time.monotonic() - started:.1f} s")
    finally:
        _delete(consul, "service-resolver", "details")


def test_service_defaults_protocol_changes_the_listener_kind(mesh, consul):
    admin = "http://" + mesh.layout.admin[NODE]

    def details_filters() -> set[str]:
        dump = requests.get(admin + "/config_dump?resource=dynamic_listeners", timeout=5).json()
        return {f["name"] for c in dump["configs"] if c["name"].startswith("outbound:details:")
                for chain in c["active_state"]["listener"]["filter_chains"] for f in chain["filters"]}

    hcm, tcp = "envoy.filters.network.http_connection_manager", "envoy.filters.network.tcp_proxy"
    assert hcm in details_filters()
    _write(consul, {"Kind": "service-defaults", "Name": "details", "Protocol": "tcp"})
    try:
        wait_until(lambda: tcp in details_filters(), 60, "details' outbound listener to become tcp_proxy",
                   interval=0.1)
        assert http_get(mesh.url)[0] == 200  # productpage still reaches details, now as plain TCP
    finally:
        _delete(consul, "service-defaults", "details")
    wait_until(lambda: hcm in details_filters(), 60, "details' listener to be HTTP again", interval=0.1)


def test_sidecar_registration_shows_envoy_and_its_check_follows_it(mesh, consul):
    """Run last: it stops the node's agent (and with it Envoy)."""
    services = requests.get(consul + "/v1/agent/services", timeout=10).json()
    sidecar = services["productpage-v1-sidecar-proxy"]
    assert (sidecar["Address"], sidecar["Port"]) == (NODE_ADDRESS, mesh.ports["pp_mesh"])
    assert sidecar["Meta"]["meshcore-version"]
    assert [u["DestinationName"] for u in sidecar["Proxy"]["Upstreams"]] == ["details", "reviews"]

    def checks():
        entries = requests.get(consul + "/v1/health/service/productpage-sidecar-proxy", timeout=10).json()
        return {c["Name"]: c["Status"] for c in entries[0]["Checks"]} if entries else {}

    wait_until(lambda: checks().get("Envoy mesh listener") == "passing", 60, "the sidecar check to pass")
    assert all(status == "passing" for name, status in checks().items() if name != "Serf Health Status"), checks()
    mesh.stop(f"agent-{NODE}")  # SIGTERM: the agent stops its Envoy
    started = time.monotonic()
    wait_until(lambda: checks().get("Envoy mesh listener") == "critical", 60, "the sidecar check to fail")
    print(f"sidecar check critical {(time.monotonic() - started) * 1000:.0f} ms after Envoy stopped (interval 1s)")
