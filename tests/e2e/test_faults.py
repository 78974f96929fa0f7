"""End to end: faults under steady traffic through the ingress, with real Envoys. None may fail a request.

The mesh is the bookinfo sample with a second instance of every service that has one (productpage on n2,
details on n3, ratings on n1), so that losing one VM's proxy leaves every service an instance. Two client
threads call the ingress (productpage -> details, reviews -> ratings) without pause while a fault is
applied and repaired; every answer must be a full page.

A second mesh (one VM, two instances of each service) has the Consul double as its catalog and its resource
store (``--store consul``): Consul restarted with empty state, and a malformed resource written into KV behind
meshctl's back. The last case puts the first mesh's control plane state directory on a small tmpfs and fills it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from tests.consul_double.server import ConsulDouble

from ._topology import CONTROL_PLANE, free_port, loopback, meshctl, running_mesh, serving, service
from ._traffic import SteadyTraffic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("faults-mesh")
    extra = [service("productpage", "productpage-v1b", "n2", "v1", ["details", "reviews"]),
             service("details", "details-v1b", "n3", "v1"),
             service("ratings", "ratings-v1b", "n1", "v1")]
    # Leaves of a minute: renewals (CA writes) happen every ~30 s, so the full-disk case sees some fail.
    with running_mesh(state, artifacts="e2e-faults-logs", extra=extra, agent_refresh="2s", leaf_ttl="60s") as m:
        yield m


def _report(name: str, traffic: SteadyTraffic) -> None:
    print(f"{name}: {traffic.ok} requests ok, {len(traffic.failed)} failed {traffic.failed[:5]}")


def test_control_plane_sigkill_loses_no_request(mesh):
    """The control plane dies without warning and comes back (same state directory): Envoys keep serving
    their last config meanwhile, agents reconnect with their node certificates, nothing is re-joined."""
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        assert mesh.stop("controlplane", sig=signal.SIGKILL)
        traffic.wait_for(50)
        mesh.start_control_plane()
        mesh.wait_synced(timeout=90)
        traffic.wait_for(50)
    _report("control plane SIGKILL", traffic)
    assert traffic.failed == []


def test_agent_sigkill_loses_no_request(mesh):
    """An agent dies without warning: its Envoy (in a session of its own) keeps serving; the restarted agent
    takes that Envoy over and the proxy is synced again."""
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        assert mesh.stop("agent-n2", sig=signal.SIGKILL)
        traffic.wait_for(50)
        mesh.start_agent("n2")
        mesh.wait_synced(timeout=90)
        traffic.wait_for(50)
    _report("agent SIGKILL", traffic)
    assert traffic.failed == []


# --- a mesh whose catalog and resource store are Consul (the double) ----------------------------------------

CONSUL_NODE = "vm-faults"
CONSUL_NODE_ADDRESS = loopback(33)
GET_ONLY = ROOT / "examples" / "policies" / "productpage-get-only.yaml"
NONSENSE = {"apiVersion": "security.mesh.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "nonsense", "namespace": "default"}, "spec": {"selector": "x"}}
NONSENSE_KEY = "meshcore/resources/AuthorizationPolicy/default/nonsense"


@pytest.fixture(scope="module")
def consul_mesh(tmp_path_factory):
    """One VM (one agent and Envoy) with two instances of productpage, details and reviews and the ingress
    gateway, registered by its agent in the Consul double; the control plane reads the catalog from Consul
    and keeps its resources in Consul KV (``--store consul``)."""
    double = ConsulDouble(node=CONSUL_NODE, node_address=CONSUL_NODE_ADDRESS)
    address = double.start()
    state = tmp_path_factory.mktemp("faults-consul-mesh")
    node_dir = state / "consul.d" / CONSUL_NODE
    node_dir.mkdir(parents=True)
    host = CONSUL_NODE_ADDRESS

    def svc(name, sid, version, upstreams=()):
        ups = [{"destination_name": u, "local_bind_address": host, "local_bind_port": free_port(host)} for u in upstreams]
        body = {"name": name, "id": sid, "port": free_port(host), "meta": {"version": version},
                "connect": {"sidecar_service": {"port": free_port(host),
                                                "proxy": {"local_service_address": host, "upstreams": ups}}}}
        (node_dir / f"{sid}.json").write_text(json.dumps({"service": body}, indent=2))
        return body

    (node_dir / "node.json").write_text(json.dumps({"node_name": CONSUL_NODE, "advertise_addr": host}))
    defs = {}
    for sid in ("productpage-v1", "productpage-v1b"):
        defs[sid] = svc("productpage", sid, "v1", ["details", "reviews"])
    for name, sid, version in (("details", "details-v1", "v1"), ("details", "details-v1b", "v1"),
                               ("reviews", "reviews-v1", "v1"), ("reviews", "reviews-v1b", "v1")):
        defs[sid] = svc(name, sid, version)
    gw_port = free_port(host)
    (node_dir / "ingress-gateway.json").write_text(json.dumps({"service": {
        "name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": gw_port,
        "proxy": {"upstreams": [{"destination_name": "productpage", "local_bind_address": host,
                                 "local_bind_port": gw_port}]}}}))
    layout = MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d", catalog_source="consul",
        env={"CONSUL_HTTP_ADDR": address, "MESHCORE_STORE": "consul"},
        xds_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", api_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        http_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", admin={CONSUL_NODE: f"{host}:{free_port(host)}"},
        agent_refresh="2s")
    m = LocalMesh(layout, progress=lambda msg: print("consul mesh:", msg, flush=True))
    m.consul, m.state, m.defs, m.node_dir = double, state, defs, node_dir
    m.gateway = f"http://{host}:{gw_port}"
    m.url = m.gateway + "/productpage?format=json"
    with serving(m, artifacts="e2e-faults-consul-logs", cleanup=double.stop):
        yield m


def _source(mesh, name: str) -> dict:
    return next(s for s in mesh.status()["control_plane"]["sources"] if s["name"] == name)


def _post_status(url: str) -> int:
    """The status of a POST through the ingress (the GET-only policy refuses it in productpage's Envoy)."""
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _endpoint_ports(mesh, service_name: str) -> set[int]:
    """The ports of ``service_name``'s endpoints in the VM's Envoy (its /clusters, JSON)."""
    admin = mesh.layout.admin[CONSUL_NODE]
    status, body = http_get(f"http://{admin}/clusters?format=json")
    assert status == 200
    ports = set()
    for cluster in json.loads(body).get("cluster_statuses", []):
        if service_name in cluster["name"] and not cluster["name"].startswith(("inbound", "local")):
            for host in cluster.get("host_statuses", []):
                ports.add(host["address"]["socket_address"]["port_value"])
    return ports


def _threads_alive(mesh) -> None:
    status = mesh.status()["control_plane"]
    assert not status.get("build_error"), status.get("build_error")
    assert all(t["restarts"] == 0 for t in status["threads"]), status["threads"]


def test_consul_restarted_empty_loses_no_request_and_no_policy(consul_mesh):
    """Consul comes back with nothing (catalog, registrations and KV lost) while traffic flows under an
    allow-only policy: the control plane holds the last good endpoints and its own copy of the resources, so
    no request fails and the policy still refuses what it refuses; agents re-register by themselves and
    ``meshctl store restore`` writes the resources back, after which every source is ok again."""
    mesh = consul_mesh
    meshctl(mesh, "apply", "-f", str(GET_ONLY))
    wait_until(lambda: _post_status(mesh.url) == 403, 30, "the GET-only policy to refuse a POST")
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        # The agent re-registers within its 2 s refresh, which ends the hold: on a loaded machine the status
        # polls missed that window. Paused (its Envoy serves on, in a session of its own), it re-registers
        # only once the hold has been seen.
        agent = next(p["pid"] for p in mesh.processes if p["name"] == f"agent-{CONSUL_NODE}")
        os.kill(agent, signal.SIGSTOP)
        try:
            mesh.consul.restart(empty=True)
            wait_until(lambda: _source(mesh, "catalog")["state"] == "holding", 60, "the catalog to show holding")
        finally:
            os.kill(agent, signal.SIGCONT)
        traffic.wait_for(30)
        assert _post_status(mesh.url) == 403, "the allow-only policy was lost with Consul's KV"
        wait_until(lambda: _source(mesh, "resources")["state"] == "holding", 30, "the store to show suspect")
        store = meshctl(mesh, "store", "status", "-o", "json", check=False)
        assert store.returncode == 3 and json.loads(store.stdout)["state"] == "suspect", store.stdout + store.stderr
        # Agents re-register their services in the empty Consul; the hold ends when all are back.
        wait_until(lambda: _source(mesh, "catalog")["state"] == "ok", 90, "the agents to re-register (hold ends)")
        traffic.wait_for(30)
        meshctl(mesh, "store", "restore", "--yes")
        wait_until(lambda: _source(mesh, "resources")["state"] == "ok", 30, "the store to be ok after restore")
        assert meshctl(mesh, "store", "status", "-o", "json").returncode == 0
        assert _post_status(mesh.url) == 403
        mesh.wait_synced(60)
        traffic.wait_for(30)
    _report("Consul restarted empty", traffic)
    assert traffic.failed == []
    _threads_alive(mesh)
    meshctl(mesh, "delete", "-f", str(GET_ONLY))
    wait_until(lambda: _post_status(mesh.url) != 403, 30, "the policy to be gone")


def test_malformed_resource_in_kv_does_not_stop_catalog_changes(consul_mesh):
    """A well-formed document with a nonsense spec written into KV behind meshctl's back: traffic is not
    disturbed, status names its key, and a catalog change after it (an instance deregistered, then back)
    still reaches Envoy."""
    import requests

    mesh = consul_mesh
    address = mesh.consul.address
    details_b = mesh.defs["details-v1b"]["connect"]["sidecar_service"]["port"]  # its Envoy's inbound port
    wait_until(lambda: details_b in _endpoint_ports(mesh, "details"), 30, "details-v1b in Envoy's endpoints")
    with SteadyTraffic(mesh.url) as traffic:
        traffic.wait_for(20)
        requests.put(f"{address}/v1/kv/{NONSENSE_KEY}", data=json.dumps(NONSENSE), timeout=10).raise_for_status()
        wait_until(lambda: _source(mesh, "resources").get("rejected"), 30, "the control plane to reject it")
        (rejected,) = _source(mesh, "resources")["rejected"]
        assert "AuthorizationPolicy/default/nonsense" in rejected["key"] and "spec.selector" in rejected["error"]
        cli = json.loads(meshctl(mesh, "status", "-o", "json").stdout)
        assert "AuthorizationPolicy/default/nonsense" in json.dumps(cli), "meshctl status does not name the key"
        traffic.wait_for(20)
        moved = mesh.node_dir / "details-v1b.json"
        kept = mesh.state / "details-v1b.json.off"
        moved.rename(kept)  # the agent deregisters it from Consul
        try:
            wait_until(lambda: details_b not in _endpoint_ports(mesh, "details"), 30,
                       "details-v1b to leave Envoy's endpoints", interval=0.1)
            traffic.wait_for(20)
        finally:
            kept.rename(moved)
        wait_until(lambda: details_b in _endpoint_ports(mesh, "details"), 30, "details-v1b back in Envoy",
                   interval=0.1)
        traffic.wait_for(20)
        requests.delete(f"{address}/v1/kv/{NONSENSE_KEY}", timeout=10).raise_for_status()
        wait_until(lambda: not _source(mesh, "resources").get("rejected"), 30, "the rejection to clear")
        traffic.wait_for(10)
    _report("malformed resource in KV", traffic)
    assert traffic.failed == []
    _threads_alive(mesh)


# --- full disk on the control plane's state directory (the file-catalog mesh; last: it leaves its CP down) ---

def _log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: no flush left to fail on close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        for size in (4096, 512, 1):  # the last partial blocks too
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_full_disk_on_the_state_dir_loses_no_request(mesh):
    """The control plane's state directory fills up (a tmpfs of a few MB mounted over it): applying a
    resource is refused with the disk error, certificate renewals fail with the journal file named in the
    log; the control plane keeps serving the config it has, and once space is freed both work again."""
    cp_dir = mesh.state / "controlplane"
    probe = mesh.state / "mount-probe"
    probe.mkdir(exist_ok=True)
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {tried.stderr.strip()}")
    subprocess.run(["umount", str(probe)], check=True)
    assert mesh.stop("controlplane")  # SIGTERM: move its state onto the small filesystem
    saved = mesh.state / "controlplane.saved"
    shutil.copytree(cp_dir, saved, symlinks=True)
    used = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + 4 * 2**20},mode=0700", "tmpfs", str(cp_dir)],
                   check=True)
    log = mesh.logs / "controlplane.log"
    try:
        shutil.copytree(saved, cp_dir, symlinks=True, dirs_exist_ok=True)
        mesh.start_control_plane()
        mesh.wait_synced(timeout=90)
        with SteadyTraffic(mesh.url) as traffic:
            traffic.wait_for(20)
            mark = log.stat().st_size
            filler = _fill(cp_dir)
            refused = meshctl(mesh, "apply", "-f", str(GET_ONLY), check=False)
            assert refused.returncode != 0, "an apply on a full disk reported success"
            said = refused.stdout + refused.stderr
            assert "No space left on device" in said and str(cp_dir / "resources") in said, said
            wait_until(lambda: "No space left on device" in _log_since(log, mark)
                       and str(cp_dir / "ca" / "issued.jsonl") in _log_since(log, mark), 90,
                       "a certificate renewal to fail on the full disk, naming the journal", interval=0.5)
            traffic.wait_for(30)
            _threads_alive(mesh)
            filler.unlink()
            freed = log.stat().st_size
            meshctl(mesh, "apply", "-f", str(GET_ONLY))
            wait_until(lambda: _post_status(mesh.url) == 403, 30, "the policy applied after space was freed")
            wait_until(lambda: "issued certificate" in _log_since(log, freed), 60, "a renewal recorded again")
            meshctl(mesh, "delete", "-f", str(GET_ONLY))
            mesh.wait_synced(timeout=60)
            traffic.wait_for(30)
        _report("full disk on the state dir", traffic)
        assert traffic.failed == []
        _threads_alive(mesh)
    finally:
        mesh.stop("controlplane")
        subprocess.run(["umount", str(cp_dir)], check=False)
