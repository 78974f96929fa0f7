"""Small catalogs for the policy tests: Consul JSON service definitions read by the real file source."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from meshcore.catalog.files import FileCatalogSource
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _unique_port(address: str, taken: set[int]) -> int:
    """A free port not handed out before in this catalog (the OS may offer a port it just gave back again)."""
    while True:
        port = free_port(address)
        if port not in taken:
            taken.add(port)
            return port


def write_catalog(root: Path, services: list[dict], node: str = "n1", address: str = "127.0.0.1") -> dict:
    """One node with ``services`` (``{"name", "protocol"?, "meta"?, "upstreams"?: [names]}``); ports picked free.
    Returns {name: definition}."""
    d = root / node
    d.mkdir(parents=True, exist_ok=True)
    (d / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": address, "datacenter": "dc1"}))
    out = {}
    taken: set[int] = set()
    for svc in services:
        meta = {"version": "v1", **svc.get("meta", {})}
        if svc.get("protocol"):
            meta["protocol"] = svc["protocol"]
        proxy: dict = {"local_service_address": address}
        if svc.get("upstreams"):  # {"name": ...} each, on a local port picked free
            proxy["upstreams"] = [{"destination_name": u, "local_bind_address": address,
                                   "local_bind_port": _unique_port(address, taken)} for u in svc["upstreams"]]
        definition = {
            "name": svc["name"], "id": f"{svc['name']}-v1", "port": _unique_port(address, taken), "meta": meta,
            "connect": {"sidecar_service": {"port": _unique_port(address, taken), "proxy": proxy}},
        }
        (d / f"{svc['name']}.json").write_text(json.dumps({"service": definition}))
        out[svc["name"]] = definition
    return out


def snapshot(root: Path, policies: str = "") -> MeshSnapshot:
    catalog = FileCatalogSource(root).poll(None, 0).catalog
    return MeshSnapshot.build(catalog, load_documents(policies, "policies.yaml") if policies else [])


def build(root: Path, policies: str = "", node: str = "n1", secrets_dir: str = "/s") -> dict:
    return build_proxy(snapshot(root, policies), ProxyInfo(node=node, secrets_dir=secrets_dir))
