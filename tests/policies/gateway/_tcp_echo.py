"""The bookinfo catalog plus Istio's tcp-echo service (v1 on vm2, v2 on vm3, port 9000, protocol tcp), for Istio's
tcp-echo sample files as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from meshcore.catalog.files import FileCatalogSource
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot
from tests.xds.test_build_golden import CATALOG


def tcp_echo_snapshot(tmp: Path, resources: str) -> MeshSnapshot:
    catalog = tmp / "consul.d"
    shutil.rmtree(catalog, ignore_errors=True)
    shutil.copytree(CATALOG, catalog)
    for node, version in (("vm2", "v1"), ("vm3", "v2")):
        service = {"name": "tcp-echo", "id": f"tcp-echo-{version}", "port": 9000,
                   "meta": {"version": version, "protocol": "tcp"},
                   "connect": {"sidecar_service": {"port": 21900 + int(version[1:])}}}
        (catalog / node / f"tcp-echo-{version}.json").write_text(json.dumps({"service": service}))
    return MeshSnapshot.build(FileCatalogSource(catalog).poll(None, 0).catalog, load_documents(resources, "tcp-echo.yaml"))
