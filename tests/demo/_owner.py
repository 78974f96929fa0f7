"""A demo owner for the process-hygiene tests: brings a one-node mesh up (control plane, the node's agent,
its Envoy keeper and Envoy, one app) on free loopback ports, prints ``ready`` and blocks until killed.

    python -m tests.demo._owner STATE_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from meshcore.demo.launcher import LocalMesh, MeshLayout
from tests.e2e._topology import CONTROL_PLANE, free_port, loopback

NODE = "h1"


def write_catalog(root: Path) -> None:
    addr = loopback(41)
    d = root / NODE
    d.mkdir(parents=True, exist_ok=True)
    (d / "node.json").write_text(json.dumps({"node_name": NODE, "advertise_addr": addr, "datacenter": "dc1"}))
    port = free_port(addr)
    svc = {"name": "ratings", "id": "ratings-v1", "port": port, "meta": {"version": "v1"},
           "connect": {"sidecar_service": {"port": free_port(addr), "proxy": {"local_service_address": addr}}},
           "check": {"id": "ratings-v1-http", "name": "http", "http": f"http://{addr}:{port}/health", "interval": "5s"}}
    (d / "ratings-v1.json").write_text(json.dumps({"service": svc}))


def main(state: Path) -> None:
    write_catalog(state / "consul.d")
    cp = CONTROL_PLANE
    addr = loopback(41)
    mesh = LocalMesh(MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d",
        xds_bind=f"{cp}:{free_port(cp)}", api_bind=f"{cp}:{free_port(cp)}", http_bind=f"{cp}:{free_port(cp)}",
        admin={NODE: f"{addr}:{free_port(addr)}"}, metrics={NODE: f"{addr}:{free_port(addr)}"},
    ), progress=lambda msg: print("owner:", msg, file=sys.stderr, flush=True))
    mesh.up()
    print("ready", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
