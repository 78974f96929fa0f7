"""Config entries as a source: Consul (blocking queries against the double) and files, laid over a store."""

from __future__ import annotations

import json
import threading
import time

import requests

from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.errors import StoreError
from meshcore.resources.consul_entries import (
    ConfigEntryStore,
    ConsulEntryWatcher,
    EntrySettings,
    FileEntryWatcher,
    open_watcher,
    with_config_entries,
)
from meshcore.resources.dir_store import DirectoryStore
from meshcore.resources.loader import load_documents

from ._data import OWN_VS

INTENTION = {"Kind": "service-intentions", "Name": "api",
             "Sources": [{"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"Methods": ["POST"]}}]}]}
def _put(ep, entry):
    r = requests.put(ep.address + "/v1/config", data=json.dumps(entry), timeout=10)
    assert r.status_code == 200, r.text


def _delete(ep, kind, name):
    assert requests.delete(f"{ep.address}/v1/config/{kind}/{name}", timeout=10).status_code == 200


def _kinds(resources):
    return sorted(f"{r.kind}/{r.name}" for r in resources)


def test_consul_entries_reach_a_blocked_watch_quickly_and_leave_after_delete(consul_http, tmp_path):
    consul_http.require_double("writes entries named api/web")
    settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_http.address})
    store = ConfigEntryStore(DirectoryStore(tmp_path / "res"), ConsulEntryWatcher(settings, wait_s=30))
    try:
        resources, index = store.watch(None, 0)
        assert resources == []
        got: dict = {}

        def block() -> None:
            t0 = time.monotonic()
            got["resources"], got["index"] = store.watch(index, 20)
            got["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=block)
        t.start()
        time.sleep(0.3)
        _put(consul_http, INTENTION)
        t.join(25)
        assert _kinds(got["resources"]) == ["AuthorizationPolicy/consul-intentions-api"]
        assert got["elapsed"] < 2.0
        (policy,) = got["resources"]
        assert dict(policy.labels)["mesh.io/origin"] == "consul"
        assert store.list() == got["resources"]
        # writes of compiled resources are refused with the Consul command to use
        try:
            store.delete([policy.key])
            raise AssertionError("deleting a compiled resource must be refused")
        except StoreError as exc:
            assert "consul config" in str(exc)
        _delete(consul_http, "service-intentions", "api")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            resources, index = store.watch(got["index"], 1)
            if not resources:
                break
        assert resources == []
    finally:
        store.close_entries()


def test_meshcore_own_resource_wins_and_the_entry_is_reported(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "router.json").write_text(json.dumps(
        {"Kind": "service-router", "Name": "api", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/v2"}},
                                                              "Destination": {"Service": "api2"}}]}))
    inner = DirectoryStore(tmp_path / "res")
    store = ConfigEntryStore(inner, FileEntryWatcher([tmp_path / "e"], poll_s=0.05))
    try:
        resources, index = store.watch(None, 0)
        assert _kinds(resources) == ["VirtualService/consul-api"]
        inner.apply(load_documents(OWN_VS, "own.yaml"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _kinds(resources) != ["VirtualService/api"]:
            resources, index = store.watch(index, 1)
        assert _kinds(resources) == ["VirtualService/api"]
        assert any(f.severity == "overridden" for f in store.findings)
        # a file edit is picked up
        (tmp_path / "e" / "splitter.hcl").write_text('Kind = "service-splitter"\nName = "db"\n'
                                                     'Splits = [{ Weight = 100, Service = "db2" }]\n')
        while time.monotonic() < deadline and "VirtualService/consul-db" not in _kinds(resources):
            resources, index = store.watch(index, 1)
        assert "VirtualService/consul-db" in _kinds(resources)
    finally:
        store.close_entries()


def test_catalog_identity_change_recompiles(tmp_path):
    """A source service's SPIFFE identity comes from the catalog: a new service account recompiles."""
    from meshcore.catalog.model import Catalog, Node, ServiceInstance

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "i.json").write_text(json.dumps(INTENTION))
    state = {"catalog": None}
    store = ConfigEntryStore(DirectoryStore(tmp_path / "res"), FileEntryWatcher([tmp_path / "e"]),
                             catalog=lambda: state["catalog"])
    try:
        resources, index = store.watch(None, 0)
        principals = resources[0].spec["rules"][0]["from"][0]["source"]["principals"]
        assert principals == ["cluster.local/ns/default/sa/web"]
        node = Node(name="vm1", address="127.0.0.1")
        state["catalog"] = Catalog.of([node], [ServiceInstance(
            service="web", id="web-1", node="vm1", port=80, mesh_address="127.0.0.1", mesh_port=21000,
            meta=(("service-account", "frontend"),))])
        resources, index = store.watch(index, 5)
        principals = resources[0].spec["rules"][0]["from"][0]["source"]["principals"]
        assert principals == ["cluster.local/ns/default/sa/frontend"]
    finally:
        store.close_entries()


def test_settings_choose_the_source(tmp_path):
    assert open_watcher(EntrySettings("auto"), "files:/etc/consul.d") is None
    assert isinstance(open_watcher(EntrySettings("auto"), "consul"), ConsulEntryWatcher)
    assert open_watcher(EntrySettings("off"), "consul") is None
    assert isinstance(open_watcher(EntrySettings(f"files:{tmp_path}"), "files:x"), FileEntryWatcher)
    inner = DirectoryStore(tmp_path / "res")
    assert with_config_entries(inner, EntrySettings("off"), catalog_spec="consul", trust_domain="td",
                               catalog=lambda: None) is inner


def test_daemon_flags():
    from meshcore.controlplane.daemon import parse_args
    from meshcore.resources.consul_entries import entry_settings

    args = parse_args(["--consul-config-entries", "off", "--consul-intentions-default", "deny"])
    assert entry_settings(args) == EntrySettings("off", "deny")


class _FailingStore:
    """A resource store whose watch fails after the first read (Consul KV unreachable)."""

    def __init__(self):
        self.calls = 0
        self.failing = True

    def list(self):
        return []

    def watch(self, index, wait):
        self.calls += 1
        if index is not None:
            time.sleep(min(wait, 0.05))  # a blocking query's wait, short
        if self.calls > 1 and self.failing:
            raise StoreError("cannot reach Consul")
        return [], 1


def test_a_failing_store_is_reported_to_the_engine(tmp_path):
    store = ConfigEntryStore(_FailingStore(), FileEntryWatcher([tmp_path]))
    index = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, index = store.watch(index, 0.2)
            except StoreError as exc:
                assert "cannot reach Consul" in str(exc)
                break
        else:
            raise AssertionError("the wrapped store's error never reached the watcher")
        store.inner.failing = False  # the store answers again: the next watch returns at once, not after its wait
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                t0 = time.monotonic()
                store.watch(index, 30)
                assert time.monotonic() - t0 < 5
                break
            except StoreError:
                continue
    finally:
        store.close_entries()


def test_health_names_the_entry_source(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "i.json").write_text(json.dumps(INTENTION))
    store = ConfigEntryStore(DirectoryStore(tmp_path / "res"), FileEntryWatcher([tmp_path / "e"]))
    try:
        store.watch(None, 0)
        health = store.health()
        assert health.ok and "config entry files" in health.location and "1 compiled resources" in health.location
    finally:
        store.close_entries()
