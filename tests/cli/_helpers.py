"""Helpers shared by the render/inventory tests (tests/cli and tests/deploy): a real CA, a real
control plane on loopback, and the bookinfo sample registered in a Consul (the test double)."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import requests

from meshcore.catalog.definitions import NodeDefinition, ServiceDefinition
from meshcore.catalog.model import Upstream

REPO = Path(__file__).resolve().parents[2]
BOOKINFO = REPO / "examples" / "bookinfo" / "consul.d"


def copy_bookinfo(dest: Path) -> Path:
    """A private copy of the bookinfo catalog directory (tests edit it)."""
    shutil.copytree(BOOKINFO, dest)
    return dest


def new_ca(directory: Path):
    """A real CA of the default trust domain, its key sealed under a fresh KEK."""
    from meshcore.ca import CertificateAuthority, generate_kek_file

    directory.mkdir(parents=True, exist_ok=True)
    kek = generate_kek_file(directory / "kek")
    return CertificateAuthority.open(directory / "ca", kek=kek)


@contextmanager
def control_plane(state_dir: Path, catalog_dir: Path) -> Iterator[object]:
    """A real control plane in this process, every listener on a free loopback port."""
    from meshcore.ca import generate_kek_file
    from meshcore.controlplane.daemon import ControlPlane, Settings

    state_dir.mkdir(parents=True, exist_ok=True)
    kek = generate_kek_file(state_dir.parent / f"{state_dir.name}.kek")
    cp = ControlPlane(Settings(state_dir=state_dir / "state", catalog=f"files:{catalog_dir}",
                               xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0"), kek)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _upstreams(upstreams: Iterable[Upstream]) -> list[dict]:
    out = []
    for u in upstreams:
        item = {"DestinationType": "service", "DestinationName": u.destination_name,
                "LocalBindAddress": u.local_bind_address, "LocalBindPort": u.local_bind_port}
        if u.datacenter:
            item["Datacenter"] = u.datacenter
        out.append(item)
    return out


def _catalog_bodies(node: NodeDefinition, svc: ServiceDefinition) -> list[dict]:
    base = {"Node": node.name, "Address": node.address, "NodeMeta": dict(node.meta)}
    service: dict = {"ID": svc.id, "Service": svc.name, "Port": svc.port, "Tags": list(svc.tags), "Meta": dict(svc.meta)}
    if svc.address:
        service["Address"] = svc.address
    if svc.kind:
        service["Kind"] = svc.kind
        service["Proxy"] = {"Upstreams": _upstreams(svc.upstreams)}
    bodies = [{**base, "Service": service}]
    if svc.sidecar:
        sidecar = {"ID": f"{svc.id}-sidecar-proxy", "Service": f"{svc.name}-sidecar-proxy", "Kind": "connect-proxy",
                   "Port": svc.sidecar_port,
                   "Proxy": {"DestinationServiceName": svc.name, "DestinationServiceID": svc.id,
                             "LocalServiceAddress": svc.local_service_address,
                             "LocalServicePort": svc.local_service_port, "Upstreams": _upstreams(svc.upstreams)}}
        if svc.sidecar_address:
            sidecar["Address"] = svc.sidecar_address
        bodies.append({**base, "Service": sidecar})
    return bodies


def register_in_consul(address: str, nodes: Iterable[NodeDefinition]) -> None:
    """Register every node and its services (with sidecar proxies) via ``PUT /v1/catalog/register``."""
    for node in nodes:
        for svc in node.services:
            for body in _catalog_bodies(node, svc):
                r = requests.put(f"{address}/v1/catalog/register", data=json.dumps(body), timeout=10)
                assert r.status_code == 200, r.text


def wait_for_catalog(cp, timeout: float = 60.0) -> None:
    """Until the control plane ``cp`` read its catalog (its status lists the nodes)."""
    import time

    deadline = time.monotonic() + timeout
    while not cp.status().get("proxies"):
        assert time.monotonic() < deadline, "the control plane never read its catalog"
        time.sleep(0.1)


def run_json(capsys, *argv: str):
    """``meshctl ARGV`` in this process; exit 0 and its stdout as JSON."""
    import json

    from meshcore.cli.main import main

    assert main(list(argv)) == 0, capsys.readouterr()
    return json.loads(capsys.readouterr().out)
