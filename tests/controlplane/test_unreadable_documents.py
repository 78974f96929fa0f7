"""A stored value that is no resource document at all never blocks a fresh start (issue 12, finding 9).

Unparsable JSON or a document at another key than its own, written into the directory store or Consul KV
behind meshctl's back before the control plane starts: the control plane starts, serves the rest of the mesh
to a connecting proxy, names the document (file or KV key) in its log, its status and ``meshctl status``,
counts it in ``meshcore_resources_rejected`` (``meshcore_resource_store_suspect`` stays 0: nothing was
lost), and ``meshctl delete`` removes it.
"""

from __future__ import annotations

import logging

import pytest
import requests

from meshcore.ca import generate_kek_file
from meshcore.catalog.consul import ConsulSettings
from meshcore.controlplane.daemon import ControlPlane
from meshcore.resources.consul_store import ConsulKVStore
from meshcore.resources.dir_store import DirectoryStore
from meshcore.resources.loader import load_documents
from meshcore.xds._typeurls import CLUSTER, LISTENER

from ..e2e._topology import free_port, write_catalog
from .test_restart import _settings, _subscribe
from .test_watchers import GOOD, WAIT, _connected, _proxy, _wait

UNPARSABLE = b'{"apiVersion": "security.mesh.io/v1beta1", "kind": "AuthorizationPolicy", "metadata": {'
GOOD_DETAILS = GOOD.replace("s1", "details")


def _dir_store(tmp_path, _request):
    store = DirectoryStore(tmp_path / "state" / "resources")
    store.apply(load_documents(GOOD_DETAILS, "good.yaml"))
    folder = tmp_path / "state" / "resources" / "AuthorizationPolicy" / "default"
    (folder / "broken.json").write_bytes(UNPARSABLE)  # behind meshctl's back
    other = load_documents(GOOD_DETAILS.replace("details-get-only", "elsewhere"), "x.yaml")[0]
    (folder / "misplaced.json").write_text(other.canonical_json())
    return store, str(folder / "broken.json")


def _consul_store(tmp_path, request):
    consul_http = request.getfixturevalue("consul_http")
    store = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "resources/")
    store.apply(load_documents(GOOD_DETAILS, "good.yaml"))
    base = f"{consul_http.address}/v1/kv/{store.prefix}AuthorizationPolicy/default/"
    other = load_documents(GOOD_DETAILS.replace("details-get-only", "elsewhere"), "x.yaml")[0]
    for name, value in (("broken", UNPARSABLE), ("misplaced", other.canonical_json().encode())):
        response = requests.put(base + name, data=value, headers=consul_http._headers(), timeout=10)
        assert response.ok, response.text
    return store, f"{store.prefix}AuthorizationPolicy/default/broken"


@pytest.mark.parametrize("make_store", [_dir_store, _consul_store], ids=["dir", "consul"])
def test_an_unreadable_document_does_not_block_a_fresh_start_and_meshctl_deletes_it(
        tmp_path, request, make_store, capsys, monkeypatch, caplog):
    from meshcore.cli.main import main as meshctl

    write_catalog(tmp_path / "catalog")
    store, location = make_store(tmp_path, request)
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    plane = ControlPlane(_settings(tmp_path, ports), generate_kek_file(tmp_path / "kek"), store=store)
    with caplog.at_level(logging.INFO):
        plane.start()
        try:
            assert plane.engine.ready.wait(WAIT), "the control plane starts with the unreadable document present"
            good = load_documents(GOOD_DETAILS, "good.yaml")[0]
            assert good.key in plane.engine.snapshot.resource_hashes, "the rest of the store is applied"
            with _connected(plane) as client:
                got = _subscribe(client)
                assert got[CLUSTER] and got[LISTENER], "a connecting Envoy gets the rest of the mesh"
                _wait(lambda: (p := _proxy(plane)) is not None and p.synced, "the proxy to be synced")

            # Named in the log (with its file or KV key), the status, the metrics.
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any("AuthorizationPolicy/default/broken" in m and location in m for m in errors), errors
            assert any("misplaced" in m for m in errors), errors
            sources = {s.name: s for s in plane.status_view().control_plane.sources}
            rejected = {r.key: r.error for r in sources["resources"].rejected}
            assert set(rejected) == {k for k in rejected if k.startswith("AuthorizationPolicy/default/")}
            (broken,) = [k for k in rejected if "/broken" in k]
            assert location in broken and "fix" in rejected[broken]
            assert any("/misplaced" in k and "elsewhere" in why for k, why in rejected.items())
            registry = plane.engine.metrics.registry
            assert registry.get_sample_value("meshcore_resources_rejected") == 2
            assert registry.get_sample_value("meshcore_resource_store_suspect") == 0
            assert len(store.health().unreadable) == 2

            token = (tmp_path / "state" / "admin.token").read_text().strip()
            monkeypatch.setenv("MESHCORE_TOKEN", token)
            server = ["--server", plane.addresses["http"]]
            capsys.readouterr()
            assert meshctl(["status", *server]) == 0
            out = capsys.readouterr().out
            assert f"rejected {broken}" in out

            # meshctl delete removes both by the key they are stored under; the rejection clears.
            assert meshctl(["delete", "authorizationpolicy", "broken", "misplaced", *server]) == 0
            out = capsys.readouterr().out
            assert "AuthorizationPolicy/default/broken deleted" in out
            assert "AuthorizationPolicy/default/misplaced deleted" in out
            _wait(lambda: not plane.engine.rejected, "the rejection to clear")
            assert registry.get_sample_value("meshcore_resources_rejected") == 0
            assert [r.key for r in store.list()] == [good.key]
        finally:
            plane.stop()
