"""Mesh gateway modes from service-defaults / proxy-defaults: Consul's precedence per upstream, applied to the
catalog, reported by the compiler, and a catalog poll that returns when the entries change a mode."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from meshcore.catalog._consul_assemble import upstreams_of
from meshcore.catalog.definitions import load_node_dir
from meshcore.catalog.model import Catalog, ServiceInstance, Upstream
from meshcore.consul_entries import CatalogFacts, CompileOptions, compile_entries, entry_of
from meshcore.consul_entries.defaults import entry_defaults, with_defaults
from meshcore.consul_entries.gateway_modes import EntryGatewayModes, entry_gateway_modes, with_gateway_modes
from meshcore.resources.consul_entries import ProtocolDefaultsSource, _Versioned

from .test_protocols import _Inner


def _e(body):
    return entry_of(body, "test")


# Every rung set, each to a different mode where it can be told apart; removed one by one, top first.
RUNGS = [
    ("upstream", "none"),
    ("override", "remote"),
    ("proxy", "local"),
    ("upstream-defaults", "none"),
    ("caller", "remote"),
    ("proxy-defaults", "local"),
    ("destination", "none"),
]


def _setup(rungs: dict[str, str]) -> tuple[Upstream, list]:
    own, proxy = rungs.get("upstream", ""), rungs.get("proxy", "")
    upstream = Upstream("api", 9000, mesh_gateway=own or proxy,
                        mesh_gateway_scope="upstream" if own else "proxy" if proxy else "")
    web: dict = {"Kind": "service-defaults", "Name": "web"}
    if "caller" in rungs:
        web["MeshGateway"] = {"Mode": rungs["caller"]}
    cfg: dict = {}
    if "upstream-defaults" in rungs:
        cfg["Defaults"] = {"MeshGateway": {"Mode": rungs["upstream-defaults"]}}
    if "override" in rungs:
        cfg["Overrides"] = [{"Name": "other", "MeshGateway": {"Mode": "local"}},
                            {"Name": "api", "MeshGateway": {"Mode": rungs["override"]}}]
    if cfg:
        web["UpstreamConfig"] = cfg
    entries = [_e(web)]
    if "proxy-defaults" in rungs:
        entries.append(_e({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": rungs["proxy-defaults"]}}))
    if "destination" in rungs:
        entries.append(_e({"Kind": "service-defaults", "Name": "api", "MeshGateway": {"Mode": rungs["destination"]}}))
    return upstream, entries


@pytest.mark.parametrize("top", range(len(RUNGS) + 1))
def test_precedence_is_consuls(top):
    """With rungs ``top..`` set, the mode is rung ``top``'s (none at all past the last)."""
    rungs = dict(RUNGS[top:])
    upstream, entries = _setup(rungs)
    mode, _ = entry_gateway_modes(entries).mode("web", upstream)
    assert mode == (RUNGS[top][1] if top < len(RUNGS) else "")


def test_entries_of_another_caller_or_upstream_do_not_apply():
    entries = [_e({"Kind": "service-defaults", "Name": "shop", "MeshGateway": {"Mode": "local"},
                   "UpstreamConfig": {"Overrides": [{"Name": "api", "MeshGateway": {"Mode": "remote"}}]}})]
    assert entry_gateway_modes(entries).mode("web", Upstream("api", 9000)) == ("", "")
    assert entry_gateway_modes(entries).mode("shop", Upstream("db", 9000)) == ("local", "service-defaults")
    assert entry_gateway_modes([_e({"Kind": "proxy-defaults", "Name": "other", "MeshGateway": {"Mode": "local"}})]) \
        == EntryGatewayModes()  # only proxy-defaults "global" is mesh-wide
    assert not entry_gateway_modes([_e({"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "bogus"}})])


def _catalog(*upstreams: Upstream) -> Catalog:
    return Catalog.of([], [ServiceInstance(service="web", id="web-1", node="n1", port=80, mesh_address="10.0.0.1",
                                           mesh_port=21000, upstreams=tuple(upstreams))])


def test_applied_to_the_catalog_and_decided_anew_when_applied_again():
    catalog = _catalog(Upstream("api", 9000), Upstream("db", 9001, mesh_gateway="none", mesh_gateway_scope="upstream"),
                       Upstream("store", 9002, mesh_gateway="remote", mesh_gateway_scope="proxy"))
    local = entry_gateway_modes([_e({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}})])
    out = with_gateway_modes(catalog, local)
    assert {u.destination_name: (u.mesh_gateway, u.mesh_gateway_scope) for u in out.instances[0].upstreams} == {
        "api": ("local", "entries"), "db": ("none", "upstream"), "store": ("remote", "proxy")}
    assert with_gateway_modes(catalog, EntryGatewayModes()) is catalog
    [inst] = out.instances  # the fast copy is the instance dataclasses.replace would make, derived values too
    assert inst.mesh_gateway_defaults == (("", "remote"),)  # other hosts: the proxy-wide mode (store's scope)
    replaced = dataclasses.replace(catalog.instances[0], upstreams=inst.upstreams,
                                   mesh_gateway_defaults=inst.mesh_gateway_defaults)
    assert inst == replaced and hash(inst) == hash(replaced)
    assert inst.labels == catalog.instances[0].labels and out.instances == tuple(sorted(out.instances))
    again = with_gateway_modes(out, EntryGatewayModes(default="remote"))  # a mode from entries is not registered
    assert {u.destination_name: u.mesh_gateway for u in again.instances[0].upstreams}["api"] == "remote"
    assert with_gateway_modes(out, entry_gateway_modes([])) is out  # entries gone: nothing to apply here
    assert with_defaults(catalog, entry_defaults([])) is catalog


def test_registration_scope_survives_the_agent_payload(tmp_path):
    """The proxy-wide mode is registered proxy-wide (not copied onto each upstream), so an entry's override
    for one upstream still wins over it, as in Consul."""
    (tmp_path / "node.json").write_text('{"node_name": "n1", "advertise_addr": "10.0.0.1"}')
    proxy_def = {"mesh_gateway": {"mode": "local"}, "upstreams": [
        {"destination_name": "api", "local_bind_port": 9000},
        {"destination_name": "db", "local_bind_port": 9001, "mesh_gateway": {"mode": "none"}}]}
    (tmp_path / "web.json").write_text(json.dumps({"service": {"name": "web", "port": 8080, "connect": {
        "sidecar_service": {"port": 21000, "proxy": proxy_def}}}}))
    [svc] = load_node_dir(tmp_path).services
    proxy = svc.to_agent_payload()["Connect"]["SidecarService"]["Proxy"]
    assert proxy["MeshGateway"] == {"Mode": "local"}
    assert [u.get("MeshGateway") for u in proxy["Upstreams"]] == [None, {"Mode": "none"}]
    read = {u.destination_name: (u.mesh_gateway, u.mesh_gateway_scope) for u in upstreams_of(proxy)}
    assert read == {"api": ("local", "proxy"), "db": ("none", "upstream")}
    assert read == {u.destination_name: (u.mesh_gateway, u.mesh_gateway_scope) for u in svc.upstreams}


def test_compiler_accepts_modes_and_reports_what_it_cannot_follow():
    entries = [_e({"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "local"},
                   "UpstreamConfig": {"Defaults": {"MeshGateway": {"Mode": "remote"}},
                                      "Overrides": [{"Name": "api", "MeshGateway": {"Mode": "sideways"}}]}}),
               _e({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "none", "Extra": 1}})]
    result = compile_entries(entries, CompileOptions())
    assert not result.resources  # modes only: nothing compiles to a DestinationRule, the catalog carries them
    assert {(f.entry, f.field, f.severity) for f in result.findings} == {
        ("service-defaults/web", "UpstreamConfig.Overrides[0].MeshGateway.Mode", "invalid"),
        ("proxy-defaults/global", "MeshGateway.Extra", "unsupported"),
    }


def test_source_returns_when_the_entries_change_a_mode():
    inner, watcher = _Inner(), _Versioned()
    inner.catalog = _catalog(Upstream("api", 9000))
    source = ProtocolDefaultsSource(inner, watcher)
    try:
        first = source.poll(None, 5)
        assert first.catalog is inner.catalog
        threading.Timer(0.2, watcher.set, ("proxy-defaults", [
            _e({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}})])).start()
        started = time.monotonic()
        second = source.poll(first.index, 30)
        assert time.monotonic() - started < 5 and second.index == first.index
        assert second.catalog.instances[0].upstreams[0].mesh_gateway == "local"
        assert second.changed_services is None  # every service's upstreams may differ: the engine compares all
    finally:
        source.close()
        watcher.close()


def test_check_says_when_a_registration_wins_over_an_entry():
    """Reported ``overridden``: web's upstream db sets its own mode (beats the Overrides entry for db and web's
    MeshGateway); web's proxy-wide mode does not beat the Overrides entry for api, so that one is not reported."""
    catalog = _catalog(Upstream("api", 9000, mesh_gateway="local", mesh_gateway_scope="proxy"),
                       Upstream("db", 9001, mesh_gateway="none", mesh_gateway_scope="upstream"))
    entries = [_e({"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "remote"},
                   "UpstreamConfig": {"Overrides": [{"Name": "api", "MeshGateway": {"Mode": "remote"}},
                                                    {"Name": "db", "MeshGateway": {"Mode": "remote"}}]}}),
               _e({"Kind": "service-defaults", "Name": "shop", "MeshGateway": {"Mode": "local"}})]
    result = compile_entries(entries, CompileOptions(catalog=CatalogFacts.of(catalog)))
    assert {(f.entry, f.field, f.severity) for f in result.findings} == {
        ("service-defaults/web", "MeshGateway", "overridden"),
        ("service-defaults/web", "UpstreamConfig.Overrides[1].MeshGateway", "overridden"),
    }


def test_hosts_that_are_no_upstream_get_the_rungs_below_the_upstreams_own():
    modes = entry_gateway_modes([
        _e({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
        _e({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {
            "Overrides": [{"Name": "backup", "MeshGateway": {"Mode": "remote"}}]}}),
        _e({"Kind": "service-defaults", "Name": "vault", "MeshGateway": {"Mode": "none"}}),
        _e({"Kind": "service-defaults", "Name": "api", "UpstreamConfig": {"Defaults": {"MeshGateway": {"Mode": "remote"}}}}),
    ])
    # web: its Overrides entry for backup (2), else proxy-defaults (6); the destination's own (7) is never reached
    assert modes.caller_defaults("web", "") == (("", "local"), ("backup", "remote"))
    assert modes.caller_defaults("web", "none") == (("", "none"), ("backup", "remote"))  # its proxy's mode (3)
    assert modes.caller_defaults("api", "") == (("", "remote"),)  # its UpstreamConfig.Defaults (4)
    alone = entry_gateway_modes([_e({"Kind": "service-defaults", "Name": "vault", "MeshGateway": {"Mode": "local"}})])
    assert alone.caller_defaults("web", "") == (("vault", "local"),)  # nothing on the caller's side: vault's own (7)
    inst = ServiceInstance("web", "web-1", "n1", 80, "10.0.0.1", 21000,
                           upstreams=(Upstream("api", 9000, mesh_gateway="none", mesh_gateway_scope="proxy"),))
    [applied] = with_gateway_modes(Catalog.of([], [inst]), modes).instances
    assert applied.mesh_gateway_defaults == (("", "none"), ("backup", "remote"))
    assert with_gateway_modes(Catalog.of([], [applied]), modes).instances[0] is applied  # applied again: unchanged
