"""A bookinfo mesh for tests: the demo's shape, on test-only loopback addresses and free ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


def loopback(host: int) -> str:
    """A test-only loopback address of this test process (all of 127/8 is loopback on Linux).

    Each process gets its own 127.X.Y.0/24 (from its pid; the demo keeps 127.0.0.x), so the meshes of two
    test runs on one machine never share an address and a port picked free here cannot be taken by the other.
    """
    pid = os.getpid()
    return f"127.{1 + (pid >> 8) % 254}.{pid % 256}.{host}"


NODES = {"n1": loopback(21), "n2": loopback(22), "n3": loopback(23), "gw": loopback(24)}
#: The control plane's address: this process's own too, so a port picked free here cannot be picked by the
#: meshes of another test process before the control plane binds it.
CONTROL_PLANE = loopback(10)


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str) -> int:
    """A port free on ``host`` now and never handed out before by this process: the kernel may give a released
    port again, and two services of one topology on one port make the catalog invalid."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port


def service(name, sid, node, version, upstreams=(), kind=""):
    """One Consul JSON service definition (the format of /etc/consul.d) plus the ports it took."""
    addr = NODES[node]
    port = free_port(addr)
    svc = {"name": name, "id": sid, "port": port, "meta": {"version": version}}
    ups = [{"destination_name": u, "local_bind_address": addr, "local_bind_port": free_port(addr)} for u in upstreams]
    if kind:
        svc["kind"] = kind
        svc["proxy"] = {"upstreams": ups}
    else:
        svc["connect"] = {"sidecar_service": {"port": free_port(addr),
                                               "proxy": {"local_service_address": addr, "upstreams": ups}}}
        svc["check"] = {"id": f"{sid}-http", "name": "http", "http": f"http://{addr}:{port}/health", "interval": "5s"}
    return node, svc


def write_catalog(root: Path, datacenters: dict[str, str] | None = None, extra=()) -> dict:
    """Write the topology as per-node directories; return {service id: definition}.

    ``datacenters`` puts nodes in other Consul datacenters than dc1 (``{"n3": "dc2"}``); ``extra`` adds
    instances, each a :func:`service` result.
    """
    defs = [
        service("productpage", "productpage-v1", "n1", "v1", ["details", "reviews"]),
        service("reviews", "reviews-v1", "n1", "v1"),
        service("details", "details-v1", "n2", "v1"),
        service("reviews", "reviews-v2", "n2", "v2", ["ratings"]),
        service("ratings", "ratings-v1", "n3", "v1"),
        service("reviews", "reviews-v3", "n3", "v3", ["ratings"]),
        service("ingress-gateway", "ingress-gateway", "gw", "v1", ["productpage"], kind="ingress-gateway"),
        *extra,
    ]
    out = {}
    for node, addr in NODES.items():
        d = root / node
        d.mkdir(parents=True, exist_ok=True)
        dc = (datacenters or {}).get(node, "dc1")
        (d / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": addr, "datacenter": dc}))
    for node, svc in defs:
        (root / node / f"{svc['id']}.json").write_text(json.dumps({"service": svc}, indent=2))
        out[svc["id"]] = {"node": node, **svc}
    return out


def meshctl(mesh, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``meshctl *args`` against ``mesh``'s control plane with its bootstrap admin token (text output); with
    ``check`` a non-zero exit fails with what meshctl printed."""
    res = subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args, "--server", mesh.cp_info["http"]],
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})
    assert not check or res.returncode == 0, (
        f"meshctl {' '.join(args)} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def _dump_logs(state: Path) -> None:
    for log in sorted((state / "logs").glob("*.log")):
        print(f"----- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))


@contextmanager
def running_mesh(state: Path, *, artifacts: str | None = None, datacenters: dict[str, str] | None = None,
                 extra=(), **layout):
    """Start the bookinfo mesh of this module's topology in ``state`` on free ports; stop it afterwards.

    ``layout`` overrides MeshLayout fields (leaf_ttl, agent_refresh, ...). The mesh gets ``defs`` (the
    written service definitions), ``gateway`` (the ingress base URL) and ``url`` (productpage as JSON).
    On a failed start the logs' tails are printed; with ``artifacts`` the logs are kept under
    test-artifacts/<artifacts> after the run. ``datacenters`` maps nodes to datacenters (default dc1);
    ``extra`` adds service instances (:func:`service` results) to the topology.
    """
    from meshcore.demo.launcher import LocalMesh, MeshLayout

    defs = write_catalog(state / "consul.d", datacenters, extra)
    settings = dict(
        state_dir=state, catalog_dir=state / "consul.d",
        xds_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", api_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        http_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        admin={node: f"{addr}:{free_port(addr)}" for node, addr in NODES.items()},
        metrics={node: f"{addr}:{free_port(addr)}" for node, addr in NODES.items()},
    )
    settings.update(layout)
    mesh = LocalMesh(MeshLayout(**settings), progress=lambda msg: print("mesh:", msg, flush=True))
    gw = defs["ingress-gateway"]["proxy"]["upstreams"][0]
    mesh.defs, mesh.state = defs, state
    mesh.gateway = f"http://{gw['local_bind_address']}:{gw['local_bind_port']}"
    mesh.url = mesh.gateway + "/productpage?format=json"
    with serving(mesh, artifacts=artifacts):
        yield mesh


@contextmanager
def serving(mesh, *, artifacts: str | None = None, cleanup=lambda: None):
    """Bring ``mesh`` (a LocalMesh with ``state`` and ``url`` set) up until ``url`` serves; stop it afterwards.

    On a failed start the logs' tails are printed; with ``artifacts`` the logs are kept under
    test-artifacts/<artifacts> after the run; ``cleanup`` runs after the mesh is down either way (e.g. stop
    a Consul double the mesh used).
    """
    try:
        mesh.up(wait_url=mesh.url)
    except BaseException:
        _dump_logs(mesh.state)
        mesh.down()
        cleanup()
        raise
    try:
        yield mesh
    finally:
        mesh.down()
        cleanup()
        if artifacts:
            target = Path(__file__).resolve().parents[2] / "test-artifacts" / artifacts
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(mesh.state / "logs", target)
