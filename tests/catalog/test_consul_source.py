"""ConsulSettings (env parsing) and ConsulCatalogSource against the Consul double (or a real Consul)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
import requests

from meshcore.catalog.consul import ConsulCatalogSource, ConsulSettings
from meshcore.catalog.model import Catalog, Upstream
from meshcore.errors import ConfigError, ConsulAuthError, ConsulError


# ---------------------------------------------------------------------------- settings (no server)
def test_settings_defaults_to_local_agent():
    s = ConsulSettings.from_env({})
    assert (s.address, s.token, s.verify, s.datacenter) == ("http://127.0.0.1:8500", None, True, None)


@pytest.mark.parametrize("addr, expected", [
    ("consul.example:8501", "http://consul.example:8501"),
    ("http://10.0.0.1:8500", "http://10.0.0.1:8500"),
    ("https://consul.example:8501", "https://consul.example:8501"),
    ("https://consul.example", "https://consul.example:443"),
    ("[::1]:8500", "http://[::1]:8500"),
])
def test_settings_parse_consul_http_addr(addr, expected):
    assert ConsulSettings.from_env({"CONSUL_HTTP_ADDR": addr}).address == expected


def test_settings_ssl_verify_datacenter_and_overrides():
    s = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "c:8501", "CONSUL_HTTP_SSL": "true",
                                 "CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_DATACENTER": "eu1"})
    assert (s.scheme, s.verify, s.datacenter) == ("https", False, "eu1")
    o = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "c:8501"}, address="https://other:9", token="t")
    assert (o.address, o.token) == ("https://other:9", "t")
    with pytest.raises(ConfigError, match="CONSUL_HTTP_SSL"):
        ConsulSettings.from_env({"CONSUL_HTTP_SSL": "maybe"})
    with pytest.raises(ConfigError, match="unknown Consul setting"):
        ConsulSettings.from_env({}, tokn="x")
    with pytest.raises(ConfigError, match="host:port"):
        ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "http://:8500"})


def test_settings_token_and_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    from_file = ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert from_file.effective_token() == "from-file"
    assert "CONSUL_HTTP_TOKEN_FILE" in from_file.token_source
    both = ConsulSettings.from_env({"CONSUL_HTTP_TOKEN": "direct", "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert both.effective_token() == "direct"  # as in Consul's CLI, the token wins over the file
    missing = ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="CONSUL_HTTP_TOKEN_FILE"):
        missing.effective_token()


def test_settings_tls_files(tmp_path):
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    s = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "https://c:8501", "CONSUL_CACERT": str(ca),
                                 "CONSUL_CLIENT_CERT": str(cert), "CONSUL_CLIENT_KEY": str(key)})
    client = s.client()
    assert client.http.verify == str(ca)
    assert client.http.cert == (str(cert), str(key))
    assert client.http.base_uri == "https://c:8501"
    with pytest.raises(ConfigError, match="together"):
        ConsulSettings.from_env({"CONSUL_CLIENT_CERT": str(cert)})
    with pytest.raises(ConfigError, match="does not exist"):
        ConsulSettings.from_env({"CONSUL_CACERT": str(tmp_path / "missing.pem")})


def test_client_uses_settings_not_process_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-process-env")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "elsewhere:1")
    client = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "127.0.0.1:8500", "CONSUL_HTTP_TOKEN": "mine"}).client()
    assert client.token == "mine"
    assert client.http.base_uri == "http://127.0.0.1:8500"


# ---------------------------------------------------------------------------- helpers
def _settings(endpoint, **overrides) -> ConsulSettings:
    return ConsulSettings.from_env(endpoint.env(), **overrides)


def _register(endpoint, definition: dict) -> None:
    endpoint.put("/v1/agent/service/register", definition)


def _node_address(endpoint) -> str:
    node = endpoint.node
    return requests.get(f"{endpoint.address}/v1/catalog/node/{node}", headers=endpoint._headers(), timeout=5).json()["Node"]["Address"]


def _poll_in_thread(source, index, wait) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        started = time.monotonic()
        try:
            out["update"] = source.poll(index, wait)
        except Exception as exc:  # surfaced by the test
            out["error"] = exc
        out["elapsed"] = time.monotonic() - started

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _mine(catalog: Catalog, endpoint) -> list:
    return [i for i in catalog.instances if endpoint.run_id in i.service]


@pytest.fixture
def source(consul_http):
    s = ConsulCatalogSource(_settings(consul_http))
    yield s
    s.close()


# ---------------------------------------------------------------------------- catalog contents
def test_source_folds_sidecar_into_instance(consul_http, source):
    web = consul_http.unique("web")
    _register(consul_http, {
        "Name": web, "ID": f"{web}-1", "Port": 8080, "Tags": ["canary"],
        "Meta": {"version": "v2", "service-account": "web-sa"},
        "Connect": {"SidecarService": {"Port": 21500, "Proxy": {
            "LocalServicePort": 8081,
            "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191},
                          {"DestinationName": "cache", "LocalBindPort": 9292, "LocalBindAddress": "127.0.0.2",
                           "Datacenter": "dc2"}]}}},
    })
    _register(consul_http, {"Name": consul_http.unique("plain"), "Port": 7000})  # no sidecar: not in the mesh

    update = source.poll(None, 0)
    (inst,) = _mine(update.catalog, consul_http)
    node_address = _node_address(consul_http)
    assert (inst.service, inst.id, inst.node) == (web, f"{web}-1", consul_http.node)
    assert (inst.mesh_address, inst.mesh_port) == (node_address, 21500)
    assert (inst.port, inst.local_service_address) == (8081, "127.0.0.1")
    assert inst.upstreams == (Upstream("cache", 9292, "127.0.0.2", "dc2"), Upstream("db", 9191, "127.0.0.1", None))
    assert inst.labels == {"app": web, "version": "v2", "service-account": "web-sa", "tag:canary": "true"}
    assert inst.service_account == "web-sa" and inst.healthy
    assert update.catalog.node(consul_http.node).address == node_address
    assert "consul" not in update.catalog.service_names()
    assert not any(i.service.endswith("-sidecar-proxy") for i in update.catalog.instances)
    assert update.index >= 1


def test_source_reads_other_nodes_and_ingress_gateways(consul_http, source):
    vm, api, gw = consul_http.unique("vm"), consul_http.unique("api"), consul_http.unique("ingress")
    consul_http.put("/v1/catalog/register", {
        "Node": vm, "Address": "10.20.0.7", "NodeMeta": {"zone": "a"},
        "Service": {"ID": f"{api}-1", "Service": api, "Port": 9000, "Address": "10.20.0.8"}})
    consul_http.put("/v1/catalog/register", {
        "Node": vm, "Address": "10.20.0.7", "SkipNodeUpdate": True,
        "Service": {"ID": f"{api}-1-sidecar-proxy", "Service": f"{api}-sidecar-proxy", "Kind": "connect-proxy",
                    "Port": 21000, "Proxy": {"DestinationServiceName": api, "DestinationServiceID": f"{api}-1"}}})
    consul_http.put("/v1/catalog/register", {
        "Node": vm, "Address": "10.20.0.7", "SkipNodeUpdate": True,
        "Service": {"ID": gw, "Service": gw, "Kind": "ingress-gateway", "Port": 8443,
                    "Proxy": {"Upstreams": [{"DestinationName": api, "LocalBindPort": 9000}]}}})
    consul_http.put("/v1/catalog/register", {
        "Node": vm, "Address": "10.20.0.7", "SkipNodeUpdate": True,
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "critical"}})

    catalog = source.poll(None, 0).catalog
    by_service = {i.service: i for i in _mine(catalog, consul_http)}
    assert set(by_service) == {api, gw}
    a = by_service[api]
    assert (a.address, a.mesh_address, a.mesh_port, a.port) == ("10.20.0.8", "10.20.0.7", 21000, 9000)
    assert a.healthy is False, "a critical node check makes the node's instances unhealthy"
    g = by_service[gw]
    assert (g.kind, g.mesh_port, g.mesh_address) == ("ingress-gateway", 8443, "10.20.0.7")
    assert g.upstreams == (Upstream(api, 9000),)
    assert catalog.node(vm).meta == (("zone", "a"),)


def test_a_critical_sidecar_makes_its_instance_unhealthy(consul_http, source):
    """As Consul's /v1/health/connect/<service> counts the proxy's checks: the app may pass its own checks,
    but with its sidecar critical (Envoy not listening) no request reaches it."""
    double = consul_http.require_double("needs set_check_status() for the sidecar's TCP check")
    web = consul_http.unique("web")
    _register(consul_http, {"Name": web, "ID": f"{web}-1", "Port": 8080,
                            "Check": {"TTL": "60s", "Status": "passing"},
                            "Connect": {"SidecarService": {"Port": 21500}}})
    (inst,) = _mine(source.poll(None, 0).catalog, consul_http)
    assert inst.healthy, "app and sidecar (default TCP + alias checks) passing"

    listening = f"service:{web}-1-sidecar-proxy:1"  # the sidecar's default "Connect Sidecar Listening" check
    double.set_check_status(listening, "critical", "dial tcp: connection refused")
    (inst,) = _mine(source.poll(None, 0).catalog, consul_http)
    assert inst.healthy is False, "a critical sidecar takes the instance out of the endpoints"

    double.set_check_status(listening, "passing")
    (inst,) = _mine(source.poll(None, 0).catalog, consul_http)
    assert inst.healthy


def _entry(sid: str, port, node: str = "vm1", name: str | None = None) -> list[dict]:
    name = name or sid
    return [{"Node": node, "Address": "10.0.0.1", "ServiceID": sid, "ServiceName": name, "ServicePort": port},
            {"Node": node, "Address": "10.0.0.1", "ServiceID": f"{sid}-sidecar-proxy", "ServiceKind": "connect-proxy",
             "ServiceName": f"{name}-sidecar-proxy", "ServicePort": 21000,
             "ServiceProxy": {"DestinationServiceID": sid, "DestinationServiceName": name}}]


def test_a_malformed_catalog_entry_is_skipped_not_the_read():
    from meshcore.catalog.consul import assemble_catalog_reporting

    catalog, rejected = assemble_catalog_reporting(
        [{"Node": "vm1", "Address": "10.0.0.1"}], {"good": _entry("good", 80), "bad": _entry("bad", "eighty")}, [])
    assert [i.service for i in catalog.instances] == ["good"]
    ((where, why),) = rejected
    assert where == "node/vm1/service/bad" and why.startswith("ValueError") and "eighty" in why


@pytest.mark.parametrize("node, name, problem", [
    ("vm1", "web.v2", "service name 'web.v2'"),  # a dot: read as <tag>.<service> by Consul's DNS
    ("vm1", "Web", "service name 'Web'"),
    ("VM_1", "web", "node name 'VM_1'"),
    ("vm1", "web\nINFO forged", "service name"),  # a line break would forge a log line
])
def test_catalog_names_that_are_not_dns_labels_are_left_out_with_the_reason(node, name, problem):
    """Consul accepts almost any service or node name and only warns that it is not discoverable by DNS;
    meshcore turns names into SPIFFE ID segments and file names, so the Consul source applies the rule the
    file source applies (one entry left out, the rest of the catalog read)."""
    from meshcore.catalog.consul import assemble_catalog_reporting

    catalog, rejected = assemble_catalog_reporting(
        [{"Node": node, "Address": "10.0.0.1"}, {"Node": "vm2", "Address": "10.0.0.2"}],
        {name: _entry("bad-1", 80, node=node, name=name), "good": _entry("good", 80, node="vm2")}, [])
    assert [i.service for i in catalog.instances] == ["good"]
    ((where, why),) = rejected
    assert problem in why and "\n" not in why and "\n" not in where


def test_the_source_reports_skipped_entries_in_its_health_and_logs_each_once(consul_http, source, caplog):
    bad = consul_http.unique("bad") + ".v2"
    _register(consul_http, {"Name": bad, "ID": f"{bad}-1", "Port": 8080,
                            "Connect": {"SidecarService": {"Port": 21501}}})
    with caplog.at_level(logging.INFO, logger="meshcore.catalog.consul"):
        source.poll(None, 0)
        source.poll(None, 0)
        assert [where for where, _ in source.health().rejected if bad in where], source.health()
        assert caplog.text.count(f"{bad}-1") == 1, "logged when it appears, not on every read"
        consul_http.put(f"/v1/agent/service/deregister/{bad}-1", {})  # its sidecar goes with it, as in Consul
        source.poll(None, 0)
    assert not [where for where, _ in source.health().rejected if bad in where]
    assert "no longer skipped" in caplog.text


def test_a_failed_watch_is_followed_by_an_immediate_re_read(consul_http, source, monkeypatch):
    """A consul-watch query that fails with anything (here a bug's ValueError) is handed to the poller, which
    raises it (the engine reports it with the index); the next poll reads at once instead of blocking at an
    index a restarted Consul may not reach for a whole wait."""
    web = consul_http.unique("web")
    _register(consul_http, {"Name": web, "Port": 80, "Connect": {"SidecarService": {}}})
    first = source.poll(None, 0)
    real = source._blocking_index

    def broken(endpoint, index, wait):
        raise ValueError("invalid literal for int() with base 10: 'x'")

    monkeypatch.setattr(source, "_blocking_index", broken)
    with pytest.raises(ValueError):
        source.poll(first.index, 5)
    monkeypatch.setattr(source, "_blocking_index", real)
    started = time.monotonic()
    again = source.poll(first.index, 5)
    assert time.monotonic() - started < 2.0 and again.extra["reason"] == "re-read after an error"
    assert [i.service for i in _mine(again.catalog, consul_http)] == [web]


# ---------------------------------------------------------------------------- blocking
def test_poll_wakes_on_registration(consul_http, source):
    first = source.poll(None, 0)
    web = consul_http.unique("late")
    t, out = _poll_in_thread(source, first.index, 10)
    time.sleep(0.3)
    _register(consul_http, {"Name": web, "Port": 80, "Connect": {"SidecarService": {}}})
    t.join(timeout=5)
    assert "error" not in out, out.get("error")
    assert out["elapsed"] < 2.0, f"poll took {out['elapsed']:.1f}s to see a registration"
    assert out["update"].index > first.index
    assert [i.service for i in _mine(out["update"].catalog, consul_http)] == [web]


def test_poll_wakes_when_ttl_check_turns_critical(consul_http, source):
    web = consul_http.unique("ttl")
    _register(consul_http, {"Name": web, "Port": 80, "Connect": {"SidecarService": {}},
                            "Checks": [{"CheckID": f"{web}-ttl", "TTL": "60s", "Status": "passing"}]})
    first = source.poll(None, 0)
    assert [i.healthy for i in _mine(first.catalog, consul_http)] == [True]
    t, out = _poll_in_thread(source, first.index, 10)
    time.sleep(0.3)
    consul_http.put(f"/v1/agent/check/fail/{web}-ttl?note=boom")
    t.join(timeout=5)
    assert "error" not in out, out.get("error")
    assert out["elapsed"] < 2.0, f"poll took {out['elapsed']:.1f}s to see a health change"
    assert [i.healthy for i in _mine(out["update"].catalog, consul_http)] == [False]
    assert out["update"].catalog.healthy(web) == ()


def test_poll_wakes_on_node_address_change(consul_http, source):
    vm, api = consul_http.unique("vm"), consul_http.unique("api")
    consul_http.put("/v1/catalog/register", {"Node": vm, "Address": "10.30.0.1", "Service": {"Service": api, "Port": 1}})
    first = source.poll(None, 0)
    t, out = _poll_in_thread(source, first.index, 10)
    time.sleep(0.3)
    consul_http.put("/v1/catalog/register", {"Node": vm, "Address": "10.30.0.2"})
    t.join(timeout=5)
    assert out["elapsed"] < 2.0
    assert out["update"].catalog.node(vm).address == "10.30.0.2"


def test_poll_without_change_waits_and_keeps_the_index(consul_http, source):
    first = source.poll(None, 0)
    started = time.monotonic()
    again = source.poll(first.index, 1.0)
    assert time.monotonic() - started >= 0.9
    assert again.index == first.index and again.catalog == first.catalog


def test_poll_with_an_index_from_another_source_blocks_from_it(consul_http):
    first = ConsulCatalogSource(_settings(consul_http)).poll(None, 0)
    fresh = ConsulCatalogSource(_settings(consul_http))  # e.g. a restarted control plane
    t, out = _poll_in_thread(fresh, first.index, 10)
    time.sleep(0.3)
    assert t.is_alive(), "an index from elsewhere is still a valid raft index to block on"
    _register(consul_http, {"Name": consul_http.unique("new"), "Port": 80, "Connect": {"SidecarService": {}}})
    t.join(timeout=5)
    assert out["elapsed"] < 2.0
    assert out["update"].extra["reset"] is False and out["update"].index > first.index


def test_quiet_polls_do_not_pile_up_blocking_queries(consul_http, source):
    def watchers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "consul-watch")

    before = watchers()  # leftovers of earlier tests only ever go away
    update = source.poll(None, 0)
    for _ in range(5):
        update = source.poll(update.index, 0.2)
    time.sleep(0.3)
    assert watchers() <= before + 3, f"{watchers() - before} blocking queries outstanding"


def test_index_reset_triggers_full_read_and_keeps_working(consul_http, source):
    double = consul_http.require_double("needs reset_index() to move Consul's index backwards")
    web = consul_http.unique("web")
    _register(consul_http, {"Name": web, "Port": 80, "Connect": {"SidecarService": {}}})
    for i in range(5):
        consul_http.put(f"/v1/kv/{consul_http.kv_prefix}{i}", {"n": i})  # push the raft index up
    first = source.poll(None, 0)
    assert first.index > 1

    # A snapshot restore while a poll is blocked: the poll wakes, sees the index go backwards, re-reads.
    t, out = _poll_in_thread(source, first.index, 10)
    time.sleep(0.3)
    double.reset_index()
    t.join(timeout=5)
    assert out["elapsed"] < 2.0
    reset = out["update"]
    assert reset.extra["reset"] is True and reset.index == 1
    assert [i.service for i in _mine(reset.catalog, consul_http)] == [web]

    # Later changes are still seen promptly from the lower index.
    t, out = _poll_in_thread(source, reset.index, 10)
    time.sleep(0.3)
    _register(consul_http, {"Name": consul_http.unique("after"), "Port": 81, "Connect": {"SidecarService": {}}})
    t.join(timeout=5)
    assert out["elapsed"] < 2.0
    assert {i.service for i in _mine(out["update"].catalog, consul_http)} == {web, consul_http.unique("after")}


def test_index_reset_seen_after_wait_when_nothing_was_blocked(consul_http, source):
    double = consul_http.require_double("needs reset_index()")
    for i in range(3):
        _register(consul_http, {"Name": consul_http.unique(f"s{i}"), "Port": 80 + i})
    first = source.poll(None, 0)
    assert first.index > 1
    double.reset_index()
    update = source.poll(first.index, 1.0)  # Consul answers after the wait with a lower index
    assert update.extra["reset"] is True and update.index == 1
    assert source.poll(update.index, 0.3).index == 1  # and blocks normally afterwards


# ---------------------------------------------------------------------------- errors
def test_missing_token_raises_auth_error_naming_the_env_var(consul_acl):
    src = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address}))
    with pytest.raises(ConsulAuthError, match="CONSUL_HTTP_TOKEN") as info:
        src.poll(None, 0)
    assert "Permission denied" in str(info.value) and consul_acl.address in str(info.value)


def test_wrong_token_raises_auth_error(consul_acl, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("not-a-real-token")
    src = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                                       "CONSUL_HTTP_TOKEN_FILE": str(token_file)}))
    with pytest.raises(ConsulAuthError, match="ACL not found") as info:
        src.poll(None, 0)
    assert "CONSUL_HTTP_TOKEN_FILE" in str(info.value)
    token_file.write_text(consul_acl.read_token)  # a fixed token file is picked up without a restart
    assert src.poll(None, 0).index >= 1


def test_unreachable_consul_raises_consul_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = ConsulCatalogSource(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": f"127.0.0.1:{port}"}))
    with pytest.raises(ConsulError, match="cannot reach Consul") as info:
        src.poll(None, 0)
    assert not isinstance(info.value, ConsulAuthError)


# ---------------------------------------------------------------------------- close
def test_close_releases_a_poll_blocked_on_consul(consul_http, source):
    """The engine's catalog loop polls; closing the source must not leave it blocked for the whole wait."""
    index = source.poll(None, 0).index
    done = threading.Event()
    t = threading.Thread(target=lambda: (source.poll(index, 30), done.set()), daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()
    source.close()
    assert done.wait(5), "a poll blocked on Consul did not return after close()"


def test_poll_after_close_is_an_error(consul_http):
    src = ConsulCatalogSource(_settings(consul_http))
    src.close()
    with pytest.raises(ConsulError, match="closed"):
        src.poll(None, 0)


def test_catalog_entries_are_json_compatible(consul_http, source):
    """The catalog built from Consul is plain data (strings, ints, tuples) all the way down."""
    _register(consul_http, {"Name": consul_http.unique("j"), "Port": 80, "Connect": {"SidecarService": {}}})
    catalog = source.poll(None, 0).catalog
    for inst in _mine(catalog, consul_http):
        json.dumps(inst.__dict__, default=list)
